"""Fail closed when Cerbos is down, and recover by itself when it returns."""

from __future__ import annotations

import time

import httpx

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def post(stack, token):
    return httpx.post(
        f"{stack.llm_base_url}/chat/completions", json=CHAT, headers={"authorization": f"Bearer {token}"}, timeout=10
    )


def test_cerbos_down_is_503_then_recovers(clean, tokens):
    assert post(clean, tokens["alice"]).status_code == 200
    clean.llm_reset()
    clean.stop_cerbos()
    try:
        r = post(clean, tokens["alice"])
        assert r.status_code == 503, r.text
        assert clean.llm_received() == [], "nothing may pass while the PDP is down"
    finally:
        clean.start_cerbos()
    deadline = time.monotonic() + 30
    while True:
        status = post(clean, tokens["alice"]).status_code
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status == 200, "agent-authz did not recover after Cerbos came back"
