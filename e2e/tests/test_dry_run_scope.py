"""Dry run through the real Envoy and Cerbos: it waives policy denials only. A path no route
classifies stays denied under `unclassified_routes: deny` (a configuration gap is not a policy
on trial), while a model the policy denies is let through and logged as a dry-run denial."""

from __future__ import annotations

import httpx
import pytest

from stack import Stack


@pytest.fixture(scope="module")
def dry():
    from conftest import require_stack_binaries

    require_stack_binaries()
    with Stack(name="dry-run", authz_overrides={"dry_run": True}) as s:
        yield s


def test_dry_run_still_denies_unclassified_paths(dry):
    token = dry.token_for("root")
    dry.llm_reset()
    for method, path in (("POST", "/v2/other"), ("GET", "/v1/files"), ("POST", "/v1/embeddings")):
        r = httpx.request(
            method, f"{dry.envoy_url}{path}", json={} if method == "POST" else None,
            headers={"authorization": f"Bearer {token}"}, timeout=10,
        )
        assert r.status_code == 403, (method, path, r.status_code, r.text)
    assert dry.llm_received() == []


def test_dry_run_lets_a_policy_denial_through_and_logs_it(dry):
    dry.llm_reset()
    before = len(dry.decisions())
    r = httpx.post(
        f"{dry.llm_base_url}/chat/completions",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},  # alice may not
        headers={"authorization": f"Bearer {dry.token_for('alice')}"}, timeout=10,
    )
    assert r.status_code == 200, r.text
    line = dry.wait_for_request_decision("/v1/chat/completions", after=before)
    assert line["dry_run"] is True and line["refusal"] == "policy_denied", line
