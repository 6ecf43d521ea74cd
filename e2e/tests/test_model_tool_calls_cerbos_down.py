"""Cerbos failing mid-answer (`model_tool_calls: judge`), through the real `openai` SDK, the real
Envoy, agent-authz and the real Cerbos: the request is allowed while Cerbos is up, then Cerbos
stops before the answer's tool call is complete (the fake provider holds the call until the
test releases it, "hold_calls"). The call is withheld (fail closed) and the answer says so;
it is never released unjudged, and the `phase: response` decision record shows the failure.

Each call's arguments are new (a random city), so no verdict can come from a cache. Against a
service that releases calls unjudged when Cerbos fails, the SDK hands the agent the call and
every test here fails. Cerbos is started again after each test, and the stack must answer
again before the next one runs."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState

from clients import openai_client
from stack import http_get

HELLO = [{"role": "user", "content": "what is the weather"}]
WITHHELD = "agent-authz refused the tool call get_weather: the policy service could not be reached, so it was withheld."


def weather() -> dict:
    return {"name": "get_weather", "arguments": {"city": f"Paris-{uuid.uuid4().hex[:12]}"}}


def hold(stack, call: dict) -> None:
    """The provider's next chat answer calls `call`, once the test releases it."""
    httpx.post(f"{stack.llm_direct_url}/_mode", json={"tool_calls": [call], "hold_calls": True},
               timeout=5).raise_for_status()


def release(stack) -> None:
    httpx.post(f"{stack.llm_direct_url}/_release", timeout=5).raise_for_status()


def wait_until_asked(stack, timeout: float = 10.0) -> None:
    """The request reached the provider: its decision (Cerbos up) is behind us."""
    deadline = time.monotonic() + timeout
    while not stack.llm_received():
        assert time.monotonic() < deadline, "the request never reached the provider"
        time.sleep(0.05)


def cerbos_up(stack) -> bool:
    try:
        return http_get(f"{stack.cerbos_http_url}/_cerbos/health")[0] == 200
    except OSError:
        return False


@pytest.fixture
def cerbos_stops(clean, tokens):
    """The stack, whose Cerbos the test stops; afterwards the provider is released, Cerbos
    runs again and a request is allowed again (so no other test sees the outage)."""
    try:
        yield clean
    finally:
        release(clean)
        httpx.post(f"{clean.llm_direct_url}/_mode", json={}, timeout=5).raise_for_status()
        if not cerbos_up(clean):
            clean.start_cerbos()
        client = openai_client(clean.llm_base_url, tokens["alice"])
        deadline = time.monotonic() + 30
        while True:
            try:
                client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
                break
            except Exception:
                assert time.monotonic() < deadline, "agent-authz did not recover after Cerbos came back"
                time.sleep(0.5)


def assert_recorded_as_withheld(stack, before: int) -> None:
    """The answer's decision record says the policy service failed, under the request's id."""
    response = stack.wait_for_decision(lambda d: d.get("phase") == "response", after=before)
    assert response["effect"] == "deny"
    assert response["reason"] == "tool calls withheld: the policy service did not answer"
    assert response["denied_tools"] == ["get_weather"]
    request = next(d for d in stack.decisions()[before:] if d["decision_id"] == response["decision_id"])
    assert request["phase"] == "request" and request["effect"] == "allow"


def test_a_streamed_call_completed_after_cerbos_stopped_is_withheld(cerbos_stops, tokens):
    stack, call = cerbos_stops, weather()
    hold(stack, call)
    before = len(stack.decisions())
    client = openai_client(stack.llm_base_url, tokens["alice"])
    state, raw = ChatCompletionStreamState(), []
    chunks = iter(client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True))
    # The text streams while the provider holds its call; then Cerbos goes away.
    for chunk in chunks:
        raw.append(chunk.model_dump_json())
        state.handle_chunk(chunk)
        if chunk.choices and chunk.choices[0].delta.content == "Let me do that.":
            break
    else:
        pytest.fail("the answer's text never arrived")
    stack.stop_cerbos()
    release(stack)
    for chunk in chunks:
        raw.append(chunk.model_dump_json())
        state.handle_chunk(chunk)
    choice = state.get_final_completion().choices[0]
    assert not choice.message.tool_calls, "a call was released unjudged"
    assert choice.finish_reason == "stop"
    assert choice.message.content == "Let me do that." + WITHHELD
    assert call["arguments"]["city"] not in "\n".join(raw)
    assert_recorded_as_withheld(stack, before)


def test_a_json_answer_arriving_after_cerbos_stopped_is_withheld(cerbos_stops, tokens):
    stack, call = cerbos_stops, weather()
    hold(stack, call)
    before = len(stack.decisions())
    client = openai_client(stack.llm_base_url, tokens["alice"])
    answers: list = []
    asking = threading.Thread(target=lambda: answers.append(
        client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)))
    asking.start()
    try:
        wait_until_asked(stack)
        stack.stop_cerbos()
    finally:
        release(stack)
        asking.join(30)
    assert answers, "the client got no answer"
    raw = answers[0]
    choice = raw.parse().choices[0]
    assert choice.message.tool_calls is None, "a call was released unjudged"
    assert choice.finish_reason == "stop"
    assert choice.message.content == WITHHELD
    assert call["arguments"]["city"] not in raw.text
    assert_recorded_as_withheld(stack, before)
