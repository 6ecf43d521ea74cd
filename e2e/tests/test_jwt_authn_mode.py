"""The jwt_authn variant: Envoy verifies the JWT, agent-authz reads the verified payload."""

from __future__ import annotations

import httpx
import openai
import pytest

from clients import openai_client
from stack import Stack, new_rsa_key

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def jwt_stack():
    from conftest import require_stack_binaries

    require_stack_binaries()
    with Stack(
        name="jwt-authn", envoy_config="agent-gateway-jwt-authn.yaml", identity_source="envoy_jwt_authn"
    ) as s:
        yield s


def test_models_are_judged_on_the_verified_payload(jwt_stack):
    jwt_stack.llm_reset()
    client = openai_client(jwt_stack.llm_base_url, jwt_stack.token_for("alice"))
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert completion.choices[0].message.content == "hello from gpt-4o-mini"
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert caught.value.body["code"] == "model_denied"
    assert "gpt-4o" in caught.value.message
    (request,) = jwt_stack.llm_received()
    assert request["headers"]["x-agent-authz-principal"] == "alice"
    assert "authorization" not in request["headers"], "jwt_authn strips the caller's token (forward: false)"


@pytest.mark.parametrize("case", ["garbage", "other-key", "expired", "wrong-audience", "no-token"])
def test_bad_tokens_are_rejected_by_envoy_itself(jwt_stack, case):
    tokens = {
        "garbage": "not-a-jwt",
        "other-key": jwt_stack.mint_token("alice", ["support"], key=new_rsa_key(), allowed_models=["gpt-4o-mini"]),
        "expired": jwt_stack.mint_token("alice", ["support"], exp_in=-600, allowed_models=["gpt-4o-mini"]),
        "wrong-audience": jwt_stack.mint_token("alice", ["support"], aud="other", allowed_models=["gpt-4o-mini"]),
        "no-token": None,
    }
    token = tokens[case]
    jwt_stack.llm_reset()
    decisions_before = len(jwt_stack.decisions())
    r = httpx.post(
        f"{jwt_stack.llm_base_url}/chat/completions",
        json={"model": "gpt-4o-mini", "messages": HELLO},
        headers={"authorization": f"Bearer {token}"} if token else {},
    )
    # Envoy's jwt_authn answers 401, except for a wrong audience, which it answers with 403.
    assert r.status_code == (403 if case == "wrong-audience" else 401), r.text
    # Envoy's jwt_authn answers ("Jwt is missing" / "Jwt verification fails" ...), not agent-authz.
    assert "Jwt" in r.text
    if r.status_code == 401:
        assert r.headers.get("www-authenticate", "").startswith("Bearer")
    assert jwt_stack.llm_received() == []
    assert jwt_stack.decisions()[decisions_before:] == [], "agent-authz should never have been asked"


def test_mcp_refund_binding_holds_in_jwt_authn_mode(jwt_stack):
    import asyncio

    from mcp import MCPError

    from clients import mcp_client

    before = len(jwt_stack.mcp_executions())

    async def go():
        async with mcp_client(jwt_stack.mcp_url, jwt_stack.token_for("alice")) as client:
            await client.call_tool("refund", {"ticket_id": "T-100", "amount_cents": 100})
            with pytest.raises(MCPError):
                await client.call_tool("refund", {"ticket_id": "T-100", "amount_cents": 200000})

    asyncio.run(go())
    assert jwt_stack.mcp_executions()[before:] == [
        {"tool": "refund", "arguments": {"ticket_id": "T-100", "amount_cents": 100}}
    ]
