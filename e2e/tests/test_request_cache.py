"""The decision cache's whole-request entries through the real Envoy, agent-authz and Cerbos
(issue 17). An agent loop resends the same model and tools every turn: the repeated turn is
answered from one cache entry, with the same verdicts enforced (denied tools still stripped)
and the same decision record, without asking Cerbos; a turn that changes anything Cerbos would
see (another principal, another tool) is judged by Cerbos again."""

from __future__ import annotations

import json

import httpx
import pytest

from helpers import HELLO, tool
from stack import Stack

@pytest.fixture(scope="module")
def cached():
    from conftest import require_stack_binaries

    require_stack_binaries()
    with Stack(name="reqcache", authz_overrides={"cache": {"enabled": True}}) as s:
        yield s


def turn(stack: Stack, token: str, tools: list[str], status: int = 200) -> tuple[list[str], dict]:
    """One turn: the tool names the upstream received, and the turn's decision record."""
    stack.llm_reset()
    before = len(stack.decisions())
    r = httpx.post(
        f"{stack.llm_base_url}/chat/completions",
        json={"model": "gpt-4o-mini", "messages": HELLO, "tools": [tool(n) for n in tools]},
        headers={"authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert r.status_code == status, r.text
    received = [
        t["function"]["name"] for request in stack.llm_received() for t in json.loads(request["body"]).get("tools", [])
    ]
    decision = stack.wait_for_request_decision("/v1/chat/completions", after=before)
    return received, decision


def test_a_repeated_turn_is_answered_from_the_cache_with_the_same_verdicts(cached):
    alice = cached.token_for("alice")
    tools = ["get_weather", "delete_repo", "run_shell"]
    received, first = turn(cached, alice, tools)
    assert received == ["get_weather"]
    assert first["cerbos_call_ids"], "the first turn asks Cerbos"
    for _ in range(2):
        received, again = turn(cached, alice, tools)
        assert received == ["get_weather"], "the cached verdicts still strip the denied tools"
        assert again["cerbos_call_ids"] == [], "a repeated turn is answered from the cache"
        assert again["resources"] == first["resources"]
        assert sorted(again["denied_tools"]) == ["delete_repo", "run_shell"]
        assert again["decision_id"] != first["decision_id"]

    # One more tool: only the new question goes to Cerbos, the rest come from the cache.
    received, more = turn(cached, alice, [*tools, "get_time"])
    assert more["cerbos_call_ids"], "a changed turn is judged again"
    assert [r["id"] for r in more["resources"]] == ["gpt-4o-mini", *tools, "get_time"]
    assert more["resources"][:4] == first["resources"]
    assert "delete_repo" not in received and "run_shell" not in received

    # Another principal asking the same: never alice's answer (mallory may not use the model).
    mallory = cached.token_for("mallory")
    received, theirs = turn(cached, mallory, tools, status=403)
    assert received == []
    assert theirs["principal"]["id"] == "mallory"
    assert theirs["effect"] == "deny"
    assert theirs["cerbos_call_ids"], "another principal's question is asked anew"
