"""Hostile and broken input through the real Envoy: every case is refused (or answered as the
upstream would read it) and never reaches an upstream unjudged."""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import time

import httpx
import pytest

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def chat_post(stack, token: str | None, content: bytes, **headers: str) -> httpx.Response:
    h = {"content-type": "application/json", **headers}
    if token:
        h["authorization"] = f"Bearer {token}"
    return httpx.post(f"{stack.llm_base_url}/chat/completions", content=content, headers=h, timeout=10)


def mcp_post(stack, token: str, content: bytes, **headers: str) -> httpx.Response:
    h = {"content-type": "application/json", "accept": "application/json, text/event-stream",
         "authorization": f"Bearer {token}", **headers}
    return httpx.post(stack.mcp_url, content=content, headers=h, timeout=10)


BAD_CHAT_BODIES = {
    "duplicate model key": b'{"model":"gpt-4o-mini","model":"gpt-4o","messages":[]}',
    "duplicate nested key": b'{"model":"gpt-4o-mini","messages":[],"tools":[{"type":"function","function":{"name":"get_weather","name":"delete_repo"}}]}',
    "not UTF-8": b'{"model":"gpt-4o-mini\xff","messages":[]}',
    "byte order mark": b'\xef\xbb\xbf{"model":"gpt-4o-mini","messages":[]}',
    "deep nesting": b'{"model":"gpt-4o-mini","messages":[],"tool_choice":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "huge number": b'{"model":"gpt-4o-mini","messages":[],"stream":1e400}',
    "broken deep in the conversation": b'{"model":"gpt-4o-mini","messages":' + b"[" * 1000 + b"1,]" + b"]" * 999 + b"}",
    "NaN": b'{"model":"gpt-4o-mini","messages":[],"temperature":NaN}',
    "truncated": b'{"model":"gpt-4o-mini","messages":[',
    "look-alike tool name": json.dumps({**CHAT, "tools": [{"type": "function", "function": {"name": "\uff44elete_repo"}}]}).encode(),
    "100k tools": json.dumps({**CHAT, "tools": [{"type": "function", "function": {"name": f"t{i}"}} for i in range(100_000)]}).encode(),
}


@pytest.mark.parametrize("case", sorted(BAD_CHAT_BODIES))
def test_unreadable_or_ambiguous_chat_bodies_are_refused(clean, tokens, case):
    r = chat_post(clean, tokens["root"], BAD_CHAT_BODIES[case])
    assert r.status_code in (400, 413), (case, r.status_code, r.text[:300])
    assert clean.llm_received() == []


def test_unjudged_parts_are_held_to_the_grammar_not_to_a_depth(clean, tokens):
    """The conversation is skipped, not built: checked byte by byte against the JSON grammar
    (the broken cases above), but deep nesting, a huge number or a lone surrogate there moves
    no member boundary, so the body is judged (alice may not use gpt-4o), not refused as
    unreadable."""
    for messages in [b"[" * 100_000 + b"]" * 100_000, b'[{"role":"user","content":"\\ud800","n":1e400}]']:
        r = chat_post(clean, tokens["alice"], b'{"model":"gpt-4o","messages":' + messages + b"}")
        assert r.status_code == 403, (r.status_code, r.text[:300])
    assert clean.llm_received() == []


def test_a_duplicate_key_is_called_ambiguous_not_invalid(clean, tokens):
    """It is valid JSON, refused because parsers disagree on which duplicate wins: say that."""
    r = chat_post(clean, tokens["root"], BAD_CHAT_BODIES["duplicate model key"])
    message = r.json()["error"]["message"]
    assert r.status_code == 400 and 'duplicate key "model"' in message, message
    assert "ambiguous" in message and "not valid JSON" not in message, message
    r = mcp_post(clean, tokens["root"], b'{"jsonrpc":"2.0","id":1,"id":2,"method":"tools/list"}')
    error = r.json()["error"]
    assert r.status_code == 400 and error["code"] == -32600, (r.status_code, error)
    assert "ambiguous" in error["message"] and 'duplicate key "id"' in error["message"], error


def test_compressed_bodies_are_refused_not_judged_as_empty(clean, tokens):
    body = gzip.compress(json.dumps({**CHAT, "model": "gpt-4o", "tools": [{"type": "function", "function": {"name": "delete_repo"}}]}).encode())
    r = chat_post(clean, tokens["alice"], body, **{"content-encoding": "gzip"})
    assert r.status_code == 415, r.text
    assert clean.llm_received() == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_wrong_or_missing_content_type_is_refused(clean, tokens, content_type):
    r = chat_post(clean, tokens["alice"], json.dumps(CHAT).encode(), **{"content-type": content_type})
    assert r.status_code == 415, r.text
    assert clean.llm_received() == []


def test_path_tricks_are_classified_as_envoy_routes_them(clean, tokens):
    # Envoy normalizes before ext_authz: the judged path is the routed path.
    for path in ["/v1/chat/completions/../../v2/admin", "/v1//chat/completions/../../v2/x"]:
        r = httpx.post(f"{clean.envoy_url}{path}", json=CHAT, headers={"authorization": f"Bearer {tokens['root']}"})
        assert r.status_code in (400, 403, 404), (path, r.status_code)
    r = httpx.post(f"{clean.envoy_url}/v1/chat/%63ompletions", json={**CHAT, "model": "gpt-4o"},
                   headers={"authorization": f"Bearer {tokens['alice']}"})
    assert r.status_code in (400, 403), r.status_code
    assert clean.llm_received() == []


@pytest.mark.parametrize("method", ["tools/call ", "Tools/Call", "TOOLS/CALL"])
def test_jsonrpc_method_tricks_are_denied(stack, tokens, method):
    body = json.dumps({"jsonrpc": "2.0", "id": 3, "method": method,
                       "params": {"name": "delete_repo", "arguments": {"name": "x"}}}).encode()
    before = len(stack.mcp_executions())
    r = mcp_post(stack, tokens["alice"], body, **{"mcp-protocol-version": "2025-11-25"})
    assert r.json()["error"]["code"] in (403, -32600), r.text
    assert len(stack.mcp_executions()) == before


def test_batches_are_refused_after_2025_03_26_and_judged_whole_before(stack, tokens):
    call = lambda i, cents: {"jsonrpc": "2.0", "id": i, "method": "tools/call",  # noqa: E731
                             "params": {"name": "refund", "arguments": {"ticket_id": "T-100", "amount_cents": cents}}}
    before = len(stack.mcp_executions())
    batch = json.dumps([call(1, 10), call(2, 999_999)]).encode()
    r = mcp_post(stack, tokens["alice"], batch, **{"mcp-protocol-version": "2025-11-25"})
    assert r.status_code == 400 and r.json()["error"]["code"] == -32600
    r = mcp_post(stack, tokens["alice"], batch)  # no version header: 2025-03-26
    answers = r.json()
    assert isinstance(answers, list) and len(answers) == 2 and all("error" in a for a in answers), answers
    assert len(stack.mcp_executions()) == before, "a batch with a denied element runs nothing"


def test_mcp_2026_routing_headers_must_agree_with_the_body(stack, tokens):
    body = json.dumps({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                       "params": {"name": "delete_repo", "arguments": {}}}).encode()
    r = mcp_post(stack, tokens["root"], body, **{"mcp-protocol-version": "2026-07-28",
                                                 "mcp-method": "tools/call", "mcp-name": "lookup_ticket"})
    assert r.status_code == 400 and r.json()["error"]["code"] == -32020, r.text


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_mcp_get_and_delete_are_judged(stack, tokens, method):
    r = httpx.request(method, stack.mcp_url, headers={"authorization": f"Bearer {tokens['mallory']}",
                                                      "accept": "text/event-stream"}, timeout=5)
    assert r.status_code == 200 and r.json()["error"]["code"] == 403, (r.status_code, r.text[:200])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict, claims: dict, signature: bytes = b"") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{b64(signature)}"


def hs256_with(secret: bytes, header: dict, claims: dict) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def test_identity_attacks_reach_nothing(clean, tokens):
    from cryptography.hazmat.primitives import serialization

    from stack import AUDIENCE, ISSUER

    now = int(time.time())
    claims = {"sub": "root", "roles": ["admin"], "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300}
    public_pem = clean.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    attacks = {
        "alg none": forge({"alg": "none", "typ": "JWT"}, claims),
        "HS256 keyed with the public key": hs256_with(public_pem, {"alg": "HS256", "kid": "test-key-1"}, claims),
        "unknown kid": forge({"alg": "RS256", "kid": "nope"}, claims, b"x" * 256),
        "kid injection": forge({"alg": "RS256", "kid": "../../etc/passwd"}, claims, b"x"),
        "expired": clean.token_for("root", exp=now - 3600),
        "not yet valid": clean.token_for("root", nbf=now + 3600),
        "oversized": clean.token_for("root", padding="x" * 20_000),
    }
    for name, token in attacks.items():
        r = chat_post(clean, token, json.dumps(CHAT).encode())
        assert r.status_code in (401, 431, 413), (name, r.status_code, r.text[:200])
    # Several Authorization headers, and a token in the query string only.
    r = httpx.post(f"{clean.llm_base_url}/chat/completions", json=CHAT,
                   headers=[("authorization", f"Bearer {tokens['alice']}"), ("authorization", f"Bearer {tokens['root']}")])
    assert r.status_code == 401, r.text
    r = httpx.post(f"{clean.llm_base_url}/chat/completions?access_token={tokens['root']}", json=CHAT)
    assert r.status_code == 401
    assert clean.llm_received() == []
