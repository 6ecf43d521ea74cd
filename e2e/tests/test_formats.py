"""Every dialect an AI gateway carries is judged the same way: a denied model is refused, a
denied tool never reaches the model, whatever the format. Real clients where PyPI has them
(`openai` for Chat, Responses and the model list; `anthropic` for Messages), recorded request
bodies for Gemini and Bedrock."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from clients import openai_client

ALICE_MODELS = ["gpt-4o-mini", "claude-sonnet-4-6", "gemini-2.5-flash", "anthropic.claude-3-haiku"]


@pytest.fixture
def alice(clean):
    """alice, allowed a model of each provider (but still not gpt-4o)."""
    return clean.token_for("alice", allowed_models=ALICE_MODELS)


def only_request(stack) -> dict:
    (request,) = stack.llm_received()
    return json.loads(request["body"])


def fn(name: str) -> dict:
    return {"type": "function", "name": name, "parameters": {"type": "object", "properties": {}}}


def test_openai_responses(clean, alice):
    client = openai_client(clean.llm_base_url, alice)
    response = client.responses.create(
        model="gpt-4o-mini",
        input="hello",
        tools=[
            fn("get_weather"),
            fn("delete_repo"),
            {"type": "mcp", "server_label": "support", "server_url": "https://mcp.example/mcp",
             "allowed_tools": ["lookup_ticket", "delete_repo"], "require_approval": "never"},
        ],
    )
    assert response.output_text == "hello from gpt-4o-mini"
    sent = only_request(clean)
    assert [t.get("name") for t in sent["tools"] if t["type"] == "function"] == ["get_weather"]
    (mcp,) = [t for t in sent["tools"] if t["type"] == "mcp"]
    assert mcp["allowed_tools"] == ["lookup_ticket"], "narrowed, not dropped"
    clean.llm_reset()
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.responses.create(model="gpt-4o", input="hello")
    assert "gpt-4o" in caught.value.message
    assert clean.llm_received() == []


def test_anthropic_messages(clean, alice):
    client = anthropic.Anthropic(base_url=clean.envoy_url, api_key="unused", max_retries=0,
                                 default_headers={"authorization": f"Bearer {alice}"})
    tool = lambda name: {"name": name, "input_schema": {"type": "object", "properties": {}}}  # noqa: E731
    message = client.messages.create(
        model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": "hello"}],
        tools=[tool("get_weather"), tool("run_shell")], tool_choice={"type": "auto"},
    )
    assert message.content[0].text == "hello from claude-sonnet-4-6"
    assert [t["name"] for t in only_request(clean)["tools"]] == ["get_weather"]
    clean.llm_reset()
    with pytest.raises(anthropic.PermissionDeniedError) as caught:
        client.messages.create(model="claude-opus-4-1", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert "claude-opus-4-1" in str(caught.value)
    assert caught.value.body["error"]["type"] == "permission_error"
    assert clean.llm_received() == []


def test_gemini_generate_content(clean, alice):
    headers = {"authorization": f"Bearer {alice}"}
    body = {
        "contents": [{"role": "user", "parts": [{"text": "hello"}]}],
        "tools": [{"functionDeclarations": [{"name": "get_weather"}, {"name": "delete_repo"}]}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather", "delete_repo"]}},
    }
    r = httpx.post(f"{clean.envoy_url}/v1beta/models/gemini-2.5-flash:generateContent", json=body, headers=headers)
    assert r.status_code == 200, r.text
    sent = only_request(clean)
    assert sent["tools"] == [{"functionDeclarations": [{"name": "get_weather"}]}]
    assert sent["toolConfig"]["functionCallingConfig"]["allowedFunctionNames"] == ["get_weather"]
    clean.llm_reset()
    r = httpx.post(f"{clean.envoy_url}/v1beta/models/gemini-2.5-pro:generateContent", json={"contents": []}, headers=headers)
    assert r.status_code == 403
    assert r.json()["error"]["status"] == "PERMISSION_DENIED" and "gemini-2.5-pro" in r.json()["error"]["message"]
    assert clean.llm_received() == []


def test_bedrock_converse(clean, alice):
    headers = {"authorization": f"Bearer {alice}"}
    spec = lambda name: {"toolSpec": {"name": name, "inputSchema": {"json": {"type": "object"}}}}  # noqa: E731
    body = {"messages": [{"role": "user", "content": [{"text": "hello"}]}],
            "toolConfig": {"tools": [spec("get_weather"), spec("run_shell")]}}
    r = httpx.post(f"{clean.envoy_url}/model/anthropic.claude-3-haiku/converse", json=body, headers=headers)
    assert r.status_code == 200, r.text
    assert [t["toolSpec"]["name"] for t in only_request(clean)["toolConfig"]["tools"]] == ["get_weather"]
    clean.llm_reset()
    r = httpx.post(f"{clean.envoy_url}/model/anthropic.claude-3-opus/converse", json={"messages": []}, headers=headers)
    assert r.status_code == 403
    assert r.headers["x-amzn-errortype"] == "AccessDeniedException"
    assert clean.llm_received() == []


def test_the_model_list_shows_only_invocable_models(clean, tokens):
    alice = openai_client(clean.llm_base_url, tokens["alice"])
    assert [m.id for m in alice.models.list()] == ["gpt-4o-mini"]
    root = openai_client(clean.llm_base_url, tokens["root"])
    assert sorted(m.id for m in root.models.list()) == ["gpt-4o", "gpt-4o-mini"]
    bob = openai_client(clean.llm_base_url, tokens["bob"])
    assert sorted(m.id for m in bob.models.list()) == ["gpt-4o", "gpt-4o-mini"]
