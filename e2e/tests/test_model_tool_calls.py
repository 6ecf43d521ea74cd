"""Question 3 for the tool calls a model emits (`model_tool_calls: judge`), through the real
`openai`, `anthropic`, `google-genai` and `boto3` SDKs, the real Envoy and the real Cerbos: the fake provider answers with scripted tool
calls; what the SDK hands the agent is compared with what was judged.

alice (support, ticket T-100, refund limit 100000) may call get_weather and lookup_ticket, and
refund on her own ticket within her limit; delete_repo is no tool of hers. Every test with a
refused call fails against a service that allows everything: the refused calls would arrive."""

from __future__ import annotations

import json

import anthropic
import httpx
from google import genai
from google.genai import types as genai_types
from openai.lib.streaming.chat import ChatCompletionStreamState

from clients import bedrock_client, openai_client

HELLO = [{"role": "user", "content": "refund my ticket"}]
WEATHER = {"name": "get_weather", "arguments": {"city": "Paris"}}
OWN_REFUND = {"name": "refund", "arguments": {"ticket_id": "T-100", "amount_cents": 5000}}
INJECTED_REFUND = {"name": "refund", "arguments": {"ticket_id": "T-999", "amount_cents": 999999}}
DELETE = {"name": "delete_repo", "arguments": {"repo": "prod"}}


def script(stack, *calls: dict) -> None:
    """The fake provider's next answers call `calls`."""
    httpx.post(f"{stack.llm_direct_url}/_mode", json={"tool_calls": list(calls)}, timeout=5).raise_for_status()


def called(message) -> list[tuple[str, dict]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]


def plain(stack, token):
    client = openai_client(stack.llm_base_url, token)
    return client.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices[0]


def streamed(stack, token):
    """The answer as the SDK's own accumulator builds it from the stream, and the raw chunks."""
    client = openai_client(stack.llm_base_url, token)
    state = ChatCompletionStreamState()
    raw = []
    for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True):
        raw.append(chunk.model_dump_json())
        state.handle_chunk(chunk)
    return state.get_final_completion().choices[0], "\n".join(raw)


def test_allowed_calls_arrive_intact(clean, tokens):
    script(clean, WEATHER, OWN_REFUND)
    choice = plain(clean, tokens["alice"])
    assert called(choice.message) == [("get_weather", {"city": "Paris"}), ("refund", OWN_REFUND["arguments"])]
    assert [c.id for c in choice.message.tool_calls] == ["call_0_get_weather", "call_1_refund"]
    assert choice.finish_reason == "tool_calls"
    choice, _ = streamed(clean, tokens["alice"])
    assert called(choice.message) == [("get_weather", {"city": "Paris"}), ("refund", OWN_REFUND["arguments"])]
    assert choice.message.content == "Let me do that."


def test_a_mixed_answer_keeps_only_the_allowed_calls(clean, tokens):
    """The prompt-injected refund never reaches the agent; the weather call does."""
    script(clean, INJECTED_REFUND, WEATHER)
    choice = plain(clean, tokens["alice"])
    assert called(choice.message) == [("get_weather", {"city": "Paris"})]
    assert choice.finish_reason == "tool_calls"
    choice, raw = streamed(clean, tokens["alice"])
    assert called(choice.message) == [("get_weather", {"city": "Paris"})]
    assert "T-999" not in raw and "refund" not in raw


def test_an_answer_left_without_calls_ends_as_text_saying_why(clean, tokens):
    before = len(clean.decisions())
    script(clean, INJECTED_REFUND, DELETE)
    choice = plain(clean, tokens["alice"])
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert "refund: amount_cents 999999 is over your refund limit of 100000" in choice.message.content or \
        "refund only on your assigned ticket T-100, not T-999" in choice.message.content
    assert "delete_repo" in choice.message.content
    choice, raw = streamed(clean, tokens["alice"])
    assert choice.message.tool_calls is None or choice.message.tool_calls == []
    assert choice.finish_reason == "stop"
    assert choice.message.content.startswith("Let me do that.agent-authz refused the tool calls refund")
    assert "999999" not in raw.split("agent-authz refused")[0]
    # The evidence: the request's decision, then the answer's, under the same decision id.
    response = clean.wait_for_decision(lambda d: d.get("phase") == "response", after=before)
    request = next(d for d in clean.decisions()[before:] if d["decision_id"] == response["decision_id"])
    assert request["phase"] == "request"
    assert sorted(response["denied_tools"]) == ["delete_repo", "refund"]
    judged = {r["id"]: r for r in response["resources"]}
    assert judged["refund"]["action"] == "tools/call/refund"
    assert judged["refund"]["attr"]["arguments"] == INJECTED_REFUND["arguments"]
    assert judged["refund"]["effect"] == "deny"


def test_unparseable_arguments_are_refused(clean, tokens):
    script(clean, {"name": "get_weather", "arguments": "{\"city\": "})
    choice = plain(clean, tokens["alice"])
    assert choice.message.tool_calls is None
    assert "get_weather: its arguments are not valid JSON" in choice.message.content


# --- Anthropic Messages, through the real `anthropic` SDK ------------------------------------

CLAUDE = "claude-sonnet-4-6"


def claude(stack):
    token = stack.token_for("alice", allowed_models=["gpt-4o-mini", CLAUDE])
    return anthropic.Anthropic(base_url=stack.envoy_url, api_key="unused", max_retries=0,
                               default_headers={"authorization": f"Bearer {token}"})


def uses(message) -> list[tuple[str, dict]]:
    return [(b.name, b.input) for b in message.content if b.type == "tool_use"]


def claude_plain(stack):
    return claude(stack).messages.create(model=CLAUDE, max_tokens=64, messages=HELLO)


def claude_streamed(stack):
    """The message as the SDK's stream helper accumulates it, and every raw event."""
    raw = []
    with claude(stack).messages.stream(model=CLAUDE, max_tokens=64, messages=HELLO) as stream:
        for event in stream:
            raw.append(event.model_dump_json())
        return stream.get_final_message(), "\n".join(raw)


def test_anthropic_allowed_calls_arrive_intact(clean):
    script(clean, WEATHER, OWN_REFUND)
    expected = [("get_weather", {"city": "Paris"}), ("refund", OWN_REFUND["arguments"])]
    message = claude_plain(clean)
    assert uses(message) == expected and message.stop_reason == "tool_use"
    message, _ = claude_streamed(clean)
    assert uses(message) == expected and message.stop_reason == "tool_use"
    assert [b.id for b in message.content if b.type == "tool_use"] == ["toolu_0_get_weather", "toolu_1_refund"]


def test_anthropic_mixed_answers_keep_only_the_allowed_calls(clean):
    script(clean, INJECTED_REFUND, WEATHER)
    message = claude_plain(clean)
    assert uses(message) == [("get_weather", {"city": "Paris"})]
    message, raw = claude_streamed(clean)
    assert uses(message) == [("get_weather", {"city": "Paris"})]
    assert message.stop_reason == "tool_use"
    assert "T-999" not in raw and "toolu_0_refund" not in raw


def test_anthropic_answer_left_without_calls_ends_the_turn_saying_why(clean):
    script(clean, INJECTED_REFUND, DELETE)
    for message in (claude_plain(clean), claude_streamed(clean)[0]):
        assert uses(message) == []
        assert message.stop_reason == "end_turn"
        said = " ".join(b.text for b in message.content if b.type == "text")
        assert said.startswith("Let me do that. agent-authz refused the tool calls refund")
        assert "delete_repo" in said


# --- OpenAI Responses, through the real `openai` SDK -----------------------------------------


def function_calls(response) -> list[tuple[str, dict]]:
    return [(i.name, json.loads(i.arguments)) for i in response.output if i.type == "function_call"]


def responses_plain(stack, token):
    return openai_client(stack.llm_base_url, token).responses.create(model="gpt-4o-mini", input="refund my ticket")


def responses_streamed(stack, token):
    """The final response as the SDK's stream helper accumulates it, and every raw event."""
    raw = []
    client = openai_client(stack.llm_base_url, token)
    with client.responses.stream(model="gpt-4o-mini", input="refund my ticket") as stream:
        for event in stream:
            raw.append(event.model_dump_json(warnings=False))
        return stream.get_final_response(), "\n".join(raw)


def test_responses_allowed_calls_arrive_intact(clean, tokens):
    script(clean, WEATHER, OWN_REFUND)
    expected = [("get_weather", {"city": "Paris"}), ("refund", OWN_REFUND["arguments"])]
    assert function_calls(responses_plain(clean, tokens["alice"])) == expected
    response, _ = responses_streamed(clean, tokens["alice"])
    assert function_calls(response) == expected


def test_responses_mixed_answers_keep_only_the_allowed_calls(clean, tokens):
    script(clean, INJECTED_REFUND, WEATHER)
    assert function_calls(responses_plain(clean, tokens["alice"])) == [("get_weather", {"city": "Paris"})]
    response, raw = responses_streamed(clean, tokens["alice"])
    assert function_calls(response) == [("get_weather", {"city": "Paris"})]
    assert "T-999" not in raw and "fc_0_refund" not in raw


def test_responses_answer_left_without_calls_says_why(clean, tokens):
    script(clean, INJECTED_REFUND, DELETE)
    for response in (responses_plain(clean, tokens["alice"]), responses_streamed(clean, tokens["alice"])[0]):
        assert function_calls(response) == []
        assert "agent-authz refused the tool calls refund" in response.output_text
        assert "delete_repo" in response.output_text


# --- Gemini, through the real `google-genai` SDK ---------------------------------------------

GEMINI = "gemini-2.5-flash"


def gemini_client(stack):
    token = stack.token_for("alice", allowed_models=["gpt-4o-mini", GEMINI])
    return genai.Client(api_key="unused", http_options=genai_types.HttpOptions(
        base_url=stack.envoy_url, api_version="v1beta", headers={"authorization": f"Bearer {token}"}))


def gemini_calls(parts) -> list[tuple[str, dict]]:
    return [(p.function_call.name, dict(p.function_call.args or {})) for p in parts if p.function_call]


def gemini_plain(stack):
    client = gemini_client(stack)  # kept alive: a collected client closes its connection
    answer = client.models.generate_content(model=GEMINI, contents="refund my ticket")
    parts = answer.candidates[0].content.parts
    return gemini_calls(parts), "".join(p.text or "" for p in parts)


def gemini_streamed(stack):
    parts, client = [], gemini_client(stack)
    for chunk in client.models.generate_content_stream(model=GEMINI, contents="refund my ticket"):
        parts += chunk.candidates[0].content.parts or []
    return gemini_calls(parts), "".join(p.text or "" for p in parts)


def test_gemini_allowed_calls_arrive_intact(clean):
    script(clean, WEATHER, OWN_REFUND)
    expected = [("get_weather", {"city": "Paris"}), ("refund", OWN_REFUND["arguments"])]
    assert gemini_plain(clean)[0] == expected
    assert gemini_streamed(clean)[0] == expected


def test_gemini_mixed_answers_keep_only_the_allowed_calls(clean):
    script(clean, INJECTED_REFUND, WEATHER)
    for calls, _ in (gemini_plain(clean), gemini_streamed(clean)):
        assert calls == [("get_weather", {"city": "Paris"})]


def test_gemini_answer_left_without_calls_says_why(clean):
    script(clean, INJECTED_REFUND, DELETE)
    for calls, text in (gemini_plain(clean), gemini_streamed(clean)):
        assert calls == []
        assert text.startswith("Let me do that.agent-authz refused the tool calls refund")
        assert "delete_repo" in text


# --- Bedrock Converse, through `boto3` (ConverseStream in AWS's binary event-stream framing) --

NOVA = "amazon.nova-lite-v1:0"


def bedrock(stack):
    return bedrock_client(stack.envoy_url, stack.token_for("alice", allowed_models=["gpt-4o-mini", NOVA]))


def tool_uses(content) -> list[tuple[str, dict]]:
    return [(b["toolUse"]["name"], b["toolUse"]["input"]) for b in content if "toolUse" in b]


def converse(stack):
    """The content blocks and stop reason boto3 parsed from a Converse answer."""
    answer = bedrock(stack).converse(modelId=NOVA, messages=[{"role": "user", "content": [{"text": "refund my ticket"}]}])
    return answer["output"]["message"]["content"], answer["stopReason"]


def converse_stream(stack):
    """The message as an agent accumulates boto3's ConverseStream events (blocks by
    contentBlockIndex, a toolUse's input parsed at contentBlockStop), the stop reason, and every
    event boto3 parsed."""
    answer = bedrock(stack).converse_stream(modelId=NOVA, messages=[{"role": "user", "content": [{"text": "refund my ticket"}]}])
    blocks: dict[int, dict] = {}
    stop, raw = None, []
    for event in answer["stream"]:
        raw.append(json.dumps(event))
        if "contentBlockStart" in event:
            start = event["contentBlockStart"]
            assert start["contentBlockIndex"] == len(blocks), "indices without gaps"
            blocks[start["contentBlockIndex"]] = {"toolUse": start["start"]["toolUse"] | {"input": ""}}
        elif "contentBlockDelta" in event:
            delta = event["contentBlockDelta"]
            block = blocks.setdefault(delta["contentBlockIndex"], {"text": ""})
            if "text" in delta["delta"]:
                block["text"] += delta["delta"]["text"]
            else:
                block["toolUse"]["input"] += delta["delta"]["toolUse"]["input"]
        elif "contentBlockStop" in event:
            block = blocks[event["contentBlockStop"]["contentBlockIndex"]]
            if "toolUse" in block:
                block["toolUse"]["input"] = json.loads(block["toolUse"]["input"])
        elif "messageStop" in event:
            stop = event["messageStop"]["stopReason"]
    assert sorted(blocks) == list(range(len(blocks)))
    return [blocks[i] for i in sorted(blocks)], stop, "\n".join(raw)


def test_bedrock_allowed_calls_arrive_intact(clean):
    script(clean, WEATHER, OWN_REFUND)
    expected = [("get_weather", {"city": "Paris"}), ("refund", OWN_REFUND["arguments"])]
    content, stop = converse(clean)
    assert tool_uses(content) == expected and stop == "tool_use"
    assert [b["toolUse"]["toolUseId"] for b in content if "toolUse" in b] == ["tooluse_0_get_weather", "tooluse_1_refund"]
    content, stop, _ = converse_stream(clean)
    assert tool_uses(content) == expected and stop == "tool_use"
    assert content[0] == {"text": "Let me do that."}


def test_bedrock_mixed_answers_keep_only_the_allowed_calls(clean):
    """The prompt-injected refund never reaches the agent, in no event of the stream."""
    script(clean, INJECTED_REFUND, WEATHER)
    content, stop = converse(clean)
    assert tool_uses(content) == [("get_weather", {"city": "Paris"})] and stop == "tool_use"
    content, stop, raw = converse_stream(clean)
    assert tool_uses(content) == [("get_weather", {"city": "Paris"})] and stop == "tool_use"
    assert "T-999" not in raw and "tooluse_0_refund" not in raw


def test_bedrock_answer_left_without_calls_ends_the_turn_saying_why(clean):
    before = len(clean.decisions())
    script(clean, INJECTED_REFUND, DELETE)
    for content, stop, *_ in (converse(clean), converse_stream(clean)):
        assert tool_uses(content) == []
        assert stop == "end_turn"
        said = "".join(b.get("text", "") for b in content)
        assert said.startswith("Let me do that.agent-authz refused the tool calls refund")
        assert "delete_repo" in said
    response = clean.wait_for_decision(lambda d: d.get("phase") == "response" and d.get("format") == "bedrock_converse",
                                       after=before)
    judged = {r["id"]: r for r in response["resources"]}
    assert judged["refund"]["attr"]["arguments"] == INJECTED_REFUND["arguments"]
    assert judged["refund"]["attr"]["type"] == "toolUse"


def test_bedrock_arguments_that_are_not_an_object_are_refused(clean):
    script(clean, {"name": "get_weather", "arguments": "\"Paris\""})
    for content, stop, *_ in (converse(clean), converse_stream(clean)):
        assert tool_uses(content) == [] and stop == "end_turn"
        assert "get_weather: its arguments are not a JSON object" in "".join(b.get("text", "") for b in content)
