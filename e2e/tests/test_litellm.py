"""LiteLLM's proxy behind Envoy + agent-authz: the recipe in README ("LiteLLM behind the
gateway"). The client talks to Envoy with its JWT; agent-authz judges the OpenAI request; Envoy
removes the caller's credentials and adds the gateway's own LiteLLM key on the LLM routes; the
allowed request reaches LiteLLM, which calls the provider (the fake upstream, which records what
it parsed). Model denial and tool stripping, with both planes of evidence.

LiteLLM's MCP gateway (README, "LiteLLM's MCP gateway"): the same LiteLLM serves the sample MCP
server through the stack's Envoy + agent-authz `/mcp` route; the real `mcp` client talks to
LiteLLM with LiteLLM's key and its JWT in LiteLLM's per-server header. What executed (the MCP
server's executions log) is compared with what agent-authz judged (the decision log)."""

from __future__ import annotations

import asyncio

import openai
import pytest
import yaml

from conftest import require_binary, require_stack_binaries
from litellm_proxy import LITELLM, LITELLM_KEY, litellm_mcp_client, litellm_proxy
from stack import MCP_SERVER_NAME, REPO, Stack, free_port, http_get, render_envoy_config

TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {}}}}
         for n in ("get_weather", "run_shell")]


@pytest.fixture(scope="module")
def gateway():
    require_stack_binaries()
    require_binary(LITELLM, "run scripts/setup.sh")
    with Stack(name="litellm") as stack, litellm_proxy(stack) as port:
        # envoy/agent-gateway.yaml with its LLM cluster pointed at LiteLLM.
        ports = {k: stack.ports[k] for k in ("authz", "authz_admin", "mcp")}
        ports.update(listener=free_port(), admin=free_port(), llm=port)
        # The gateway's LiteLLM key on every LLM route, after the caller's credentials are
        # removed (README's per-route upstream credential recipe).
        config = yaml.safe_load((REPO / "envoy" / "agent-gateway.yaml").read_text())
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
            if route.get("route", {}).get("cluster") == "llm_upstream":
                route["request_headers_to_add"] = [{
                    "header": {"key": "authorization", "value": "Bearer %ENVIRONMENT(LITELLM_KEY)%"},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
        envoy = stack.dir / "envoy-litellm.yaml"
        envoy.write_text(render_envoy_config(yaml.safe_dump(config, sort_keys=False), ports, str(stack.jwks_path)))
        stack._spawn_envoy("envoy_litellm", envoy, ports["admin"], {"LITELLM_KEY": LITELLM_KEY})
        stack._wait("envoy_litellm", lambda: http_get(f"http://127.0.0.1:{ports['admin']}/ready")[0] == 200)
        yield stack, f"http://127.0.0.1:{ports['listener']}/v1", f"http://127.0.0.1:{port}/mcp"


def test_litellm_behind_the_gateway_strips_denied_tools(gateway):
    stack, url, _ = gateway
    stack.llm_reset()
    client = openai.OpenAI(base_url=url, api_key=stack.token_for("alice"), max_retries=0, timeout=60)
    before = len(stack.decisions())
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                            tools=TOOLS)
    assert answer.choices[0].message.content == "hello from gpt-4o-mini"
    (request,) = stack.llm_received()
    assert request["parsed"]["model"] == "gpt-4o-mini"
    assert request["parsed"]["tools"] == ["get_weather"], "run_shell never reached the provider"
    assert request["headers"]["authorization"] == "Bearer provider-key", "LiteLLM's own provider key"
    decision = stack.wait_for_decision(lambda d: d.get("format") == "openai_chat", after=before)
    assert decision["denied_tools"] == ["run_shell"]


def test_litellm_behind_the_gateway_never_sees_a_denied_model(gateway):
    stack, url, _ = gateway
    stack.llm_reset()
    client = openai.OpenAI(base_url=url, api_key=stack.token_for("alice"), max_retries=0, timeout=60)
    before = len(stack.decisions())
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert "gpt-4o" in caught.value.message
    assert stack.llm_received() == []
    decision = stack.wait_for_decision(lambda d: d.get("format") == "openai_chat", after=before)
    assert decision["effect"] == "deny"


def judged_refund(stack: Stack, after: int) -> tuple[str, str, dict]:
    """Who asked, the effect, and the arguments agent-authz judged for the refund (decision log)."""
    decision = stack.wait_for_decision(
        lambda d: any(r.get("action") == "tools/call/refund" for r in d.get("resources", [])), after=after)
    (refund,) = [r for r in decision["resources"] if r["action"] == "tools/call/refund"]
    return decision["principal"]["id"], refund["effect"], refund["attr"]["arguments"]


async def call_through_litellm(mcp_url: str, token: str, tool: str, arguments: dict):
    async with litellm_mcp_client(mcp_url, token) as client:
        return await client.call_tool(f"{MCP_SERVER_NAME}-{tool}", arguments)


def test_litellm_mcp_gateway_lists_only_the_tools_the_caller_may_see(gateway):
    stack, _, mcp_url = gateway

    async def names(token: str) -> list[str]:
        async with litellm_mcp_client(mcp_url, token) as client:
            return sorted(t.name for t in (await client.list_tools()).tools)

    assert asyncio.run(names(stack.token_for("alice"))) == ["support-lookup_ticket", "support-refund"]
    assert asyncio.run(names(stack.token_for("root"))) == ["support-delete_repo", "support-lookup_ticket",
                                                           "support-refund"]


def test_litellm_mcp_gateway_executes_alices_refund_within_her_binding(gateway):
    stack, _, mcp_url = gateway
    before, judged = len(stack.mcp_executions()), len(stack.decisions())
    arguments = {"ticket_id": "T-100", "amount_cents": 5000}
    result = asyncio.run(call_through_litellm(mcp_url, stack.token_for("alice"), "refund", arguments))
    assert not result.is_error, result
    assert "refunded 5000 cents on T-100" in result.content[0].text
    assert stack.mcp_executions()[before:] == [{"tool": "refund", "arguments": arguments}]
    assert judged_refund(stack, judged) == ("alice", "allow", arguments)


@pytest.mark.parametrize("arguments", [
    pytest.param({"ticket_id": "T-100", "amount_cents": 200000}, id="over-limit"),
    pytest.param({"ticket_id": "T-999", "amount_cents": 10}, id="other-ticket"),
])
def test_litellm_mcp_gateway_never_executes_a_refund_outside_the_binding(gateway, arguments):
    stack, _, mcp_url = gateway
    before, judged = len(stack.mcp_executions()), len(stack.decisions())
    result = asyncio.run(call_through_litellm(mcp_url, stack.token_for("alice"), "refund", arguments))
    # LiteLLM passes agent-authz's refusal on to the caller as a tool result marked as an error.
    assert result.is_error and "agent-authz: alice may not call tool refund" in result.content[0].text, result
    assert stack.mcp_executions()[before:] == [], "the denied refund executed"
    assert judged_refund(stack, judged) == ("alice", "deny", arguments)


def test_litellm_mcp_gateway_without_the_callers_jwt_executes_nothing(gateway):
    """LiteLLM's key alone reaches no tool: the MCP server's gateway wants the caller's JWT."""
    stack, _, mcp_url = gateway
    before, judged = len(stack.mcp_executions()), len(stack.decisions())
    result = asyncio.run(call_through_litellm(mcp_url, "not-a-jwt", "lookup_ticket", {"ticket_id": "T-100"}))
    assert result.is_error and "401" in result.content[0].text, result
    assert stack.mcp_executions()[before:] == []
    assert stack.wait_for_decision(lambda d: d.get("path") == "/mcp", after=judged)["effect"] == "deny"
