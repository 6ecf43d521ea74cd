"""Each provider's own SDK through the real Envoy: Gemini (`google-genai`, its default API
version and v1beta, streamed), Azure OpenAI (`openai.AzureOpenAI`, deployments and the v1
paths), Anthropic streamed. Model gating and tool stripping are judged on what the provider
reads: the fake upstream records what it parsed, and the tests compare it with the decision."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

ALICE_MODELS = ["gpt-4o-mini", "claude-sonnet-4-6", "gemini-2.5-flash"]


@pytest.fixture
def alice(clean):
    return clean.token_for("alice", allowed_models=ALICE_MODELS)


def parsed(stack) -> dict:
    (request,) = stack.llm_received()
    return request["parsed"]


def judged(stack, after: int, fmt: str) -> dict:
    return stack.wait_for_decision(lambda d: d.get("format") == fmt, after=after)


def models_judged(decision: dict) -> list[str]:
    return [r["id"] for r in decision["resources"] if r["kind"] == "llm_model"]


# ------------------------------------------------------------------------------ Gemini
def gemini(stack, token: str, version: str | None) -> genai.Client:
    options = {"base_url": stack.envoy_url, "headers": {"authorization": f"Bearer {token}"}}
    if version:
        options["api_version"] = version
    return genai.Client(api_key="gemini-key", http_options=types.HttpOptions(**options))


GEMINI_TOOLS = [types.Tool(function_declarations=[
    types.FunctionDeclaration(name="get_weather", description="weather"),
    types.FunctionDeclaration(name="delete_repo", description="deletes"),
])]


@pytest.mark.parametrize("version", [None, "v1beta"], ids=["default-version", "v1beta"])
def test_gemini_sdk_generates_streams_and_loses_denied_tools(clean, alice, version):
    client = gemini(clean, alice, version)
    before = len(clean.decisions())
    answer = client.models.generate_content(model="gemini-2.5-flash", contents="hello",
                                            config=types.GenerateContentConfig(tools=GEMINI_TOOLS))
    assert answer.text == "hello from gemini-2.5-flash"
    (request,) = clean.llm_received()
    expected_prefix = "/v1beta/" if version else "/v1/"
    assert request["path"].startswith(expected_prefix + "models/gemini-2.5-flash:generateContent"), request["path"]
    assert request["parsed"]["tools"] == ["get_weather"], "the denied declaration never reaches Gemini"
    assert models_judged(judged(clean, before, "gemini")) == [request["parsed"]["model"]]
    clean.llm_reset()
    stream = client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi",
                                                   config=types.GenerateContentConfig(tools=GEMINI_TOOLS))
    assert "".join(c.text for c in stream) == "hello from gemini-2.5-flash"
    seen = parsed(clean)
    assert (seen["stream"], seen["tools"]) == (True, ["get_weather"])
    clean.llm_reset()
    with pytest.raises(genai_errors.ClientError) as caught:
        client.models.generate_content(model="gemini-2.5-pro", contents="hello")
    assert caught.value.code == 403 and "gemini-2.5-pro" in caught.value.message
    assert clean.llm_received() == []


def test_openai_model_list_and_gemini_share_the_v1_models_prefix(clean, alice):
    """GET /v1/models (OpenAI's list, filtered) and POST /v1/models/{m}:generateContent
    (Gemini) are told apart by Envoy's routes, not by a prefix."""
    listed = [m.id for m in openai.OpenAI(base_url=clean.llm_base_url, api_key=alice, max_retries=0).models.list()]
    assert listed == ["gpt-4o-mini"]
    assert gemini(clean, alice, None).models.generate_content(model="gemini-2.5-flash", contents="x").text


# ------------------------------------------------------------------------------ Azure OpenAI
def azure(stack, token: str | None, **extra) -> openai.AzureOpenAI:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return openai.AzureOpenAI(azure_endpoint=stack.envoy_url, api_key=extra.pop("api_key", "azure-key"),
                              api_version="2024-10-21", default_headers=headers, max_retries=0, **extra)


def fn(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}


def test_azure_deployment_is_judged_as_the_model_it_serves(clean, alice):
    client = azure(clean, alice)
    before = len(clean.decisions())
    answer = client.chat.completions.create(model="prod-gpt", messages=[{"role": "user", "content": "hi"}],
                                            tools=[fn("get_weather"), fn("run_shell")])
    assert answer.choices[0].message.content == "hello from prod-gpt"
    (request,) = clean.llm_received()
    assert request["path"].startswith("/openai/deployments/prod-gpt/chat/completions?api-version=")
    assert request["parsed"]["tools"] == ["get_weather"]
    assert models_judged(judged(clean, before, "azure_openai_chat")) == ["gpt-4o-mini"], "mapped deployment"
    clean.llm_reset()
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="big-gpt", messages=[{"role": "user", "content": "hi"}])
    assert "gpt-4o" in caught.value.message
    assert clean.llm_received() == []
    # Responses (no deployment in the path: the body's model is the deployment)
    assert client.responses.create(model="prod-gpt", input="hi").output_text == "hello from prod-gpt"
    assert parsed(clean)["model"] == "prod-gpt"
    clean.llm_reset()
    with pytest.raises(openai.PermissionDeniedError):
        client.responses.create(model="big-gpt", input="hi")
    assert clean.llm_received() == []


def test_azure_v1_paths_and_unrouted_operations(clean, alice):
    v1 = openai.OpenAI(base_url=f"{clean.envoy_url}/openai/v1/", api_key=alice, max_retries=0)
    assert v1.chat.completions.create(model="prod-gpt", messages=[{"role": "user", "content": "hi"}]).choices
    assert parsed(clean)["model"] == "prod-gpt"
    clean.llm_reset()
    with pytest.raises(openai.PermissionDeniedError):
        v1.chat.completions.create(model="big-gpt", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.PermissionDeniedError) as caught:
        azure(clean, alice).embeddings.create(model="prod-gpt", input="hi")
    assert "no route" in caught.value.message
    assert clean.llm_received() == []


def test_the_azure_api_key_is_never_an_identity(clean, alice):
    """A valid JWT in `api-key` (Azure's key header) does not authenticate anyone."""
    with pytest.raises(openai.AuthenticationError):
        azure(clean, None, api_key=alice).chat.completions.create(
            model="prod-gpt", messages=[{"role": "user", "content": "hi"}])
    assert clean.llm_received() == []


# ------------------------------------------------------------------------------ Anthropic
def test_anthropic_sdk_streams_through_the_gateway(clean, alice):
    client = anthropic.Anthropic(base_url=clean.envoy_url, api_key="unused", max_retries=0,
                                 default_headers={"authorization": f"Bearer {alice}"})
    tools = [{"name": n, "input_schema": {"type": "object", "properties": {}}} for n in ("get_weather", "run_shell")]
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=16, tools=tools,
                                messages=[{"role": "user", "content": "hello"}]) as stream:
        assert stream.get_final_text() == "hello from claude-sonnet-4-6"
    seen = parsed(clean)
    assert (seen["stream"], seen["tools"]) == (True, ["get_weather"])
    clean.llm_reset()
    with pytest.raises(anthropic.PermissionDeniedError):
        with client.messages.stream(model="claude-opus-4-1", max_tokens=8,
                                    messages=[{"role": "user", "content": "hi"}]) as stream:
            stream.get_final_text()
    assert clean.llm_received() == []


# ------------------------------------------------------------------------------ who picks the format
def test_a_header_never_chooses_how_a_body_is_judged(clean, alice):
    """`x-llm-format: mcp` once made a chat body judged as an MCP call (gpt-4o and a denied tool
    reached the upstream). Only Envoy's route names the format."""
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    for fmt in ("mcp", "anthropic_messages", "gemini"):
        r = httpx.post(f"{clean.llm_base_url}/chat/completions", json=body,
                       headers={"authorization": f"Bearer {alice}", "x-llm-format": fmt})
        assert r.status_code == 403 and r.json()["error"]["code"] == "model_denied", (fmt, r.text)
    assert clean.llm_received() == []


def test_a_route_letting_the_client_pick_the_format_is_refused_at_start():
    """The old `routes[].format_header` let the client pick the parser; a config naming it is
    now an error at start (strict config), and the gateway never comes up with it."""
    from conftest import require_stack_binaries
    from stack import Stack, StackError, default_authz_config

    require_stack_binaries()
    routes = default_authz_config()["routes"]
    routes[0]["format_header"] = "x-llm-format"
    try:
        with Stack(name="format-header", authz_overrides={"routes": routes, "azure_openai": None},
                   envoy_config="llm-gateway.yaml") as s:
            token = s.token_for("alice")
            # Envoy without context extensions on this path: only agent-authz's table decides.
            # Judged as an MCP ping (a session message), read by the upstream as a gpt-4o chat.
            both = {"jsonrpc": "2.0", "id": 1, "method": "ping", "model": "gpt-4o",
                    "messages": [{"role": "user", "content": "hi"}]}
            r = httpx.post(f"{s.envoy_url}/v1/chat/completions", json=both,
                           headers={"authorization": f"Bearer {token}", "x-llm-format": "mcp"})
            pytest.fail(f"agent-authz started with format_header; the exploit answered {r.status_code}, "
                        f"upstream received {json.dumps(s.llm_received())[:300]}")
    except StackError as e:
        assert "format_header" in str(e), str(e)
