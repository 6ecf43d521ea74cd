"""Question 2 through the real `openai` SDK: which tools may the model ever see?"""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from clients import openai_client
from helpers import HELLO, tool
from receivers import metric_series
from stack import Stack

def test_declaring_an_allowed_tool_passes(clean, tokens):
    client = openai_client(clean.llm_base_url, tokens["alice"])
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, tools=[tool("get_weather")])
    assert completion.choices[0].message.content == "hello from gpt-4o-mini"
    (request,) = clean.llm_received()
    assert [t["function"]["name"] for t in json.loads(request["body"])["tools"]] == ["get_weather"]


def test_denied_tools_are_stripped_before_the_upstream(clean, tokens):
    """alice may use get_weather only: the other two declared tools never reach the model."""
    client = openai_client(clean.llm_base_url, tokens["alice"])
    before = len(clean.decisions())
    completion = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,
        tools=[tool("get_weather"), tool("delete_repo"), tool("run_shell")],
    )
    assert completion.choices[0].message.content == "hello from gpt-4o-mini"
    (request,) = clean.llm_received()
    sent = json.loads(request["body"])
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]
    assert int(request["headers"]["content-length"]) == len(request["body"].encode())
    decision = clean.wait_for_request_decision("/v1/chat/completions", after=before)
    assert decision["effect"] == "allow"
    assert sorted(decision["denied_tools"]) == ["delete_repo", "run_shell"]


def test_stripping_keeps_every_other_byte(clean, tokens):
    """Field order, number spellings, unicode escapes and whitespace reach the upstream as sent."""
    weather = json.dumps(tool("get_weather"))
    delete = json.dumps(tool("delete_repo"))
    raw = (
        '{"model": "gpt-4o-mini",  "temperature": 1.0, "seed": 12345678901234567890,\n'
        ' "messages": [{"role": "user", "content": "h\\u00e9llo \u2603"}],\n'
        f' "tools": [{weather}, {delete}], "tool_choice": "auto", "top_p": 0.50}}'
    ).encode()
    r = httpx.post(
        f"{clean.llm_base_url}/chat/completions",
        content=raw,
        headers={"authorization": f"Bearer {tokens['alice']}", "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    (request,) = clean.llm_received()
    assert request["body"].encode() == raw.replace(f", {delete}".encode(), b"")


def test_stripping_every_tool_drops_tool_choice_and_parallel_tool_calls(clean, tokens):
    client = openai_client(clean.llm_base_url, tokens["alice"])
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,
        tools=[tool("delete_repo")],
        tool_choice="required",
        parallel_tool_calls=False,
    )
    (request,) = clean.llm_received()
    sent = json.loads(request["body"])
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(sent), sent
    assert sent["messages"] == HELLO


def test_a_tool_choice_forcing_a_denied_tool_is_refused(clean, tokens):
    client = openai_client(clean.llm_base_url, tokens["alice"])
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=HELLO,
            tools=[tool("get_weather"), tool("delete_repo")],
            tool_choice={"type": "function", "function": {"name": "delete_repo"}},
        )
    assert caught.value.body["code"] == "tool_denied"
    assert "delete_repo" in caught.value.message
    assert clean.llm_received() == []


def test_legacy_functions_are_stripped_too(clean, tokens):
    body = {
        "model": "gpt-4o-mini",
        "messages": HELLO,
        "functions": [
            {"name": "run_shell", "parameters": {"type": "object", "properties": {}}},
            {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
        ],
        "function_call": {"name": "get_weather"},
    }
    r = httpx.post(
        f"{clean.llm_base_url}/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {tokens['alice']}"},
    )
    assert r.status_code == 200, r.text
    (request,) = clean.llm_received()
    sent = json.loads(request["body"])
    assert [f["name"] for f in sent["functions"]] == ["get_weather"]
    assert sent["function_call"] == {"name": "get_weather"}


def test_admin_keeps_every_tool_and_support_loses_the_denied_one(clean, tokens):
    root = openai_client(clean.llm_base_url, tokens["root"])
    root.chat.completions.create(model="gpt-4o-mini", messages=HELLO, tools=[tool("run_shell")])
    bob = openai_client(clean.llm_base_url, tokens["bob"])
    bob.chat.completions.create(model="gpt-4o-mini", messages=HELLO, tools=[tool("run_shell"), tool("lookup_ticket")])
    first, second = clean.llm_received()
    assert first["headers"]["x-agent-authz-principal"] == "root"
    assert [t["function"]["name"] for t in json.loads(first["body"])["tools"]] == ["run_shell"]
    assert second["headers"]["x-agent-authz-principal"] == "bob"
    assert [t["function"]["name"] for t in json.loads(second["body"])["tools"]] == ["lookup_ticket"]


@pytest.fixture(scope="module")
def reject_stack():
    """A stack whose agent-authz refuses requests declaring denied tools (the choice for
    deployments that can only run ext_authz, e.g. Istio CUSTOM)."""
    from conftest import require_stack_binaries

    require_stack_binaries()
    with Stack(name="denied-tools-reject", authz_overrides={"denied_tools": "reject"}) as s:
        yield s


def test_reject_mode_refuses_a_request_declaring_a_denied_tool(reject_stack):
    reject_stack.llm_reset()
    client = openai_client(reject_stack.llm_base_url, reject_stack.token_for("alice"))
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, tools=[tool("get_weather"), tool("delete_repo")]
        )
    err = caught.value
    assert err.status_code == 403
    assert err.body["code"] == "tool_denied"
    assert err.body["type"] == "permission_denied"
    assert "delete_repo" in err.message
    assert "get_weather" not in err.message, "only the denied tool should be named"
    assert reject_stack.llm_received() == []


def tool_array_metrics(stack: Stack) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{stack.ports['authz_admin']}/metrics", timeout=5).text
    return {what: float(metric_series(text, f"agent_authz_tool_arrays_{what}_total")[0].split()[-1])
            for what in ("known", "remembered")}


def test_an_agent_loop_resending_its_tools_is_judged_every_turn(reject_stack):
    """An agent resends the same tool declarations every turn while its conversation grows;
    agent-authz takes a byte-identical `tools` array as read (extract/known_tools.rs). A tool
    added on a later turn, or one renamed by a byte, is judged all the same."""
    reject_stack.llm_reset()
    counted = tool_array_metrics(reject_stack)
    client = openai_client(reject_stack.llm_base_url, reject_stack.token_for("alice"))
    weather = tool("get_weather")
    weather["function"]["description"] = "Current weather for a city, in metric units. " * 12
    messages = list(HELLO)
    for turn in range(3):
        before = len(reject_stack.decisions())
        completion = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=[weather])
        messages += [{"role": "assistant", "content": completion.choices[0].message.content},
                     {"role": "user", "content": f"and turn {turn + 2}?"}]
        # What the model's endpoint parsed is what was judged, every turn.
        parsed = [t["function"]["name"] for t in json.loads(reject_stack.llm_received()[-1]["body"])["tools"]]
        judged = reject_stack.wait_for_request_decision("/v1/chat/completions", after=before)
        assert parsed == judged["allowed_tools"] == ["get_weather"], (parsed, judged)
    assert len(reject_stack.llm_received()) == 3
    # The metrics show it: the array remembered, and known on a later turn (each runtime worker
    # remembers its own, so at least one of the three turns is a known one).
    now = tool_array_metrics(reject_stack)
    assert now["remembered"] > counted["remembered"] and now["known"] > counted["known"], (counted, now)
    renamed = json.loads(json.dumps(weather).replace("get_weather", "get_weathes"))
    for tools in ([weather, tool("delete_repo")], [renamed]):
        with pytest.raises(openai.PermissionDeniedError) as caught:
            client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=tools)
        assert caught.value.body["code"] == "tool_denied"
    assert len(reject_stack.llm_received()) == 3, "no denied turn reached the model"


def test_an_anthropic_agent_loop_resending_its_tools_is_judged_every_turn(reject_stack):
    """The same through the `anthropic` SDK: Messages remembers its `tools` arrays as Chat does
    (the reader keyed apart, so an array Chat read is never known to Messages)."""
    reject_stack.llm_reset()
    token = reject_stack.token_for("alice", allowed_models=["claude-sonnet-4-6"])
    client = anthropic.Anthropic(base_url=reject_stack.envoy_url, api_key="unused", max_retries=0,
                                 default_headers={"authorization": f"Bearer {token}"})
    weather = {"name": "get_weather", "description": "Current weather for a city, in metric units. " * 12,
               "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    messages = [{"role": "user", "content": "hello"}]
    for turn in range(3):
        before = len(reject_stack.decisions())
        answer = client.messages.create(model="claude-sonnet-4-6", max_tokens=16, messages=messages, tools=[weather])
        messages += [{"role": "assistant", "content": answer.content[0].text},
                     {"role": "user", "content": f"and turn {turn + 2}?"}]
        parsed = [t["name"] for t in json.loads(reject_stack.llm_received()[-1]["body"])["tools"]]
        judged = reject_stack.wait_for_request_decision("/v1/messages", after=before)
        assert parsed == judged["allowed_tools"] == ["get_weather"], (parsed, judged)
    assert len(reject_stack.llm_received()) == 3
    renamed = json.loads(json.dumps(weather).replace("get_weather", "get_weathes"))
    delete_repo = {"name": "delete_repo", "input_schema": {"type": "object", "properties": {}}}
    for tools in ([weather, delete_repo], [renamed]):
        with pytest.raises(anthropic.PermissionDeniedError):
            client.messages.create(model="claude-sonnet-4-6", max_tokens=16, messages=messages, tools=tools)
    assert len(reject_stack.llm_received()) == 3, "no denied turn reached the model"


@pytest.mark.parametrize("dialect", ["responses", "gemini"])
def test_responses_and_gemini_agent_loops_are_judged_every_turn(reject_stack, dialect):
    """The same through the `openai` SDK's Responses and through `google-genai`, whose `tools`
    arrays are remembered per dialect too."""
    reject_stack.llm_reset()
    long = "Current weather for a city, in metric units. " * 12
    if dialect == "responses":
        client = openai_client(reject_stack.llm_base_url, reject_stack.token_for("alice"))
        weather = {"type": "function", "name": "get_weather", "description": long,
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
        delete_repo = {"type": "function", "name": "delete_repo", "parameters": {"type": "object", "properties": {}}}

        def turn(text, tools):
            client.responses.create(model="gpt-4o-mini", input=text, tools=tools)
        refused, fmt = openai.PermissionDeniedError, "openai_responses"
    else:
        client = genai.Client(api_key="gemini-key", http_options=genai_types.HttpOptions(
            base_url=reject_stack.envoy_url,
            headers={"authorization": f"Bearer {reject_stack.token_for('alice', allowed_models=['gemini-2.5-flash'])}"}))
        weather = {"name": "get_weather", "description": long,
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
        delete_repo = {"name": "delete_repo", "description": "deletes"}

        def turn(text, tools):
            config = genai_types.GenerateContentConfig(tools=[genai_types.Tool(function_declarations=tools)])
            client.models.generate_content(model="gemini-2.5-flash", contents=text, config=config)
        refused, fmt = genai_errors.ClientError, "gemini"
    for n in range(3):
        before = len(reject_stack.decisions())
        turn("hello " * (n + 1), [weather])
        parsed = reject_stack.llm_received()[-1]["parsed"]["tools"]
        judged = reject_stack.wait_for_decision(lambda d: d.get("format") == fmt, after=before)
        assert parsed == judged["allowed_tools"] == ["get_weather"], (parsed, judged)
    renamed = json.loads(json.dumps(weather).replace("get_weather", "get_weathes"))
    for tools in ([weather, delete_repo], [renamed]):
        with pytest.raises(refused) as caught:
            turn("and now?", tools)
        assert "403" in str(caught.value) or getattr(caught.value, "code", None) == 403
    assert len(reject_stack.llm_received()) == 3, "no denied turn reached the model"


def test_reject_mode_judges_legacy_functions(reject_stack):
    reject_stack.llm_reset()
    body = {
        "model": "gpt-4o-mini",
        "messages": HELLO,
        "functions": [{"name": "run_shell", "parameters": {"type": "object", "properties": {}}}],
    }
    r = httpx.post(
        f"{reject_stack.llm_base_url}/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {reject_stack.token_for('alice')}"},
    )
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "tool_denied"
    assert "run_shell" in r.json()["error"]["message"]
    assert reject_stack.llm_received() == []


@pytest.fixture(scope="module")
def pass_stack():
    """A second stack whose agent-authz lets requests with denied tools through (and logs them)."""
    from conftest import require_stack_binaries

    require_stack_binaries()
    with Stack(name="denied-tools-pass", authz_overrides={"denied_tools": "pass"}) as s:
        yield s


def test_pass_mode_forwards_the_body_unchanged(pass_stack):
    token = pass_stack.token_for("alice")
    body = json.dumps(
        {"model": "gpt-4o-mini", "messages": HELLO, "tools": [tool("get_weather"), tool("delete_repo")]},
        separators=(",", ":"),
    ).encode()
    before = len(pass_stack.decisions())
    r = httpx.post(
        f"{pass_stack.llm_base_url}/chat/completions",
        content=body,
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    (request,) = pass_stack.llm_received()
    assert request["body"].encode() == body, "pass mode must not alter the request"
    decision = pass_stack.wait_for_request_decision("/v1/chat/completions", after=before)
    verdicts = {(res["kind"], res["id"]): res["effect"] for res in decision["resources"]}
    assert verdicts[("llm_tool", "delete_repo")] != "allow", "the denied tool is still recorded as denied"
    assert verdicts[("llm_tool", "get_weather")] == "allow"


def test_pass_mode_still_enforces_the_model(pass_stack):
    client = openai_client(pass_stack.llm_base_url, pass_stack.token_for("alice"))
    pass_stack.llm_reset()
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="gpt-4o", messages=HELLO, tools=[tool("delete_repo")])
    assert pass_stack.llm_received() == []
