"""Question 2 through the real `openai` SDK: which tools may the model ever see?"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from clients import openai_client
from stack import Stack

HELLO = [{"role": "user", "content": "hello"}]


def tool(name: str) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"the {name} tool",
            "parameters": {"type": "object", "properties": {"x": {"type": "string"}}},
        },
    }


def test_declaring_an_allowed_tool_passes(clean, tokens):
    client = openai_client(clean.llm_base_url, tokens["alice"])
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, tools=[tool("get_weather")])
    assert completion.choices[0].message.content == "hello from gpt-4o-mini"
    (request,) = clean.llm_received()
    assert [t["function"]["name"] for t in json.loads(request["body"])["tools"]] == ["get_weather"]


def test_declaring_a_denied_tool_is_refused(clean, tokens):
    client = openai_client(clean.llm_base_url, tokens["alice"])
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
    assert clean.llm_received() == []


def test_legacy_functions_are_judged_too(clean, tokens):
    body = {
        "model": "gpt-4o-mini",
        "messages": HELLO,
        "functions": [{"name": "run_shell", "parameters": {"type": "object", "properties": {}}}],
    }
    r = httpx.post(
        f"{clean.llm_base_url}/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {tokens['alice']}"},
    )
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "tool_denied"
    assert "run_shell" in r.json()["error"]["message"]
    assert clean.llm_received() == []


def test_admin_may_declare_any_tool_and_guest_none(clean, tokens):
    root = openai_client(clean.llm_base_url, tokens["root"])
    root.chat.completions.create(model="gpt-4o-mini", messages=HELLO, tools=[tool("run_shell")])
    # mallory may not even invoke the model; bob (support) may not declare run_shell.
    bob = openai_client(clean.llm_base_url, tokens["bob"])
    with pytest.raises(openai.PermissionDeniedError) as caught:
        bob.chat.completions.create(model="gpt-4o-mini", messages=HELLO, tools=[tool("run_shell")])
    assert "run_shell" in caught.value.message
    assert [r["headers"]["x-agent-authz-principal"] for r in clean.llm_received()] == ["root"]


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
    decision = pass_stack.wait_for_decision(lambda d: d.get("path") == "/v1/chat/completions", after=before)
    verdicts = {(res["kind"], res["id"]): res["effect"] for res in decision["resources"]}
    assert verdicts[("llm_tool", "delete_repo")] != "allow", "the denied tool is still recorded as denied"
    assert verdicts[("llm_tool", "get_weather")] == "allow"


def test_pass_mode_still_enforces_the_model(pass_stack):
    client = openai_client(pass_stack.llm_base_url, pass_stack.token_for("alice"))
    pass_stack.llm_reset()
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="gpt-4o", messages=HELLO, tools=[tool("delete_repo")])
    assert pass_stack.llm_received() == []
