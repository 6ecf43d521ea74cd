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


import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from stack import Stack


class Load:
    """Steady requests from a few threads; records (start time, status) of each, bounded in time."""

    def __init__(self, stack: Stack, token: str, seconds: float, threads: int = 4) -> None:
        self.stack, self.token, self.seconds, self.threads = stack, token, seconds, threads
        self.results: list[tuple[float, int]] = []
        self._lock = threading.Lock()

    def _worker(self) -> None:
        end = time.monotonic() + self.seconds
        with httpx.Client(timeout=10) as client:
            while time.monotonic() < end:
                started = time.monotonic()
                try:
                    status = client.post(
                        f"{self.stack.llm_base_url}/chat/completions",
                        json=CHAT,
                        headers={"authorization": f"Bearer {self.token}"},
                    ).status_code
                except httpx.HTTPError:
                    status = 0
                with self._lock:
                    self.results.append((started, status))

    def run_in_background(self) -> ThreadPoolExecutor:
        pool = ThreadPoolExecutor(self.threads)
        for _ in range(self.threads):
            pool.submit(self._worker)
        return pool


def test_cerbos_killed_mid_load_allows_nothing_during_the_outage(clean, tokens):
    agent_authz = clean.procs["agent_authz"].popen
    load = Load(clean, tokens["alice"], seconds=4.0)
    pool = load.run_in_background()
    time.sleep(1.0)
    killed_at = time.monotonic()
    clean.procs["cerbos"].popen.kill()
    time.sleep(1.5)
    restarted_at = time.monotonic()
    clean.start_cerbos()
    pool.shutdown(wait=True)
    during = [status for started, status in load.results if killed_at + 0.05 < started < restarted_at]
    assert during, "no request was sent during the outage"
    assert during.count(200) == 0, "a request was allowed while the PDP was down"
    assert set(during) <= {503}, set(during)
    assert any(status == 200 for started, status in load.results if started < killed_at), "allowed before"
    assert agent_authz.poll() is None, "agent-authz must survive the outage"
    deadline = time.monotonic() + 30
    while post(clean, tokens["alice"]).status_code != 200:
        assert time.monotonic() < deadline, "no recovery after Cerbos returned"
        time.sleep(0.2)


def test_a_frozen_cerbos_times_out_closed(clean, tokens):
    """Cerbos stopped (SIGSTOP) but its socket open: every check waits cerbos.timeout, then 503."""
    cerbos = clean.procs["cerbos"].popen
    os.kill(cerbos.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        r = post(clean, tokens["alice"])
        elapsed = time.monotonic() - started
        assert r.status_code == 503, r.text
        assert "timed out" in r.json()["error"]["message"]
        assert elapsed < 1.5, f"the 500 ms PDP timeout should bound the wait, took {elapsed:.2f}s"
        assert clean.llm_received() == []
    finally:
        os.kill(cerbos.pid, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while post(clean, tokens["alice"]).status_code != 200:
        assert time.monotonic() < deadline, "no recovery after Cerbos resumed"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def narrow():
    """A stack that judges at most 2 checks at once, so a burst must be shed."""
    from conftest import require_stack_binaries

    require_stack_binaries()
    with Stack(name="burst", authz_overrides={"server": {"max_concurrent_checks": 2}}) as s:
        yield s


def test_a_burst_beyond_capacity_is_shed_never_allowed_unjudged(narrow):
    token = narrow.token_for("alice")
    bodies = [CHAT] * 30 + [{**CHAT, "model": "gpt-4o"}] * 30  # half allowed, half denied models
    before = len(narrow.decisions())

    def send(body):
        with httpx.Client(timeout=10) as client:
            return body["model"], client.post(
                f"{narrow.llm_base_url}/chat/completions", json=body, headers={"authorization": f"Bearer {token}"}
            )

    with ThreadPoolExecutor(30) as pool:
        answers = list(pool.map(send, bodies))
    statuses = {(model, r.status_code) for model, r in answers}
    assert ("gpt-4o", 200) not in statuses, "a denied model got through the burst"
    assert statuses <= {("gpt-4o-mini", 200), ("gpt-4o-mini", 503), ("gpt-4o", 403), ("gpt-4o", 503)}, statuses
    shed = [r for _, r in answers if r.status_code == 503]
    assert shed, "30 concurrent requests against a limit of 2 should shed some"
    assert all(r.headers.get("retry-after") == "1" and "overloaded" in r.text for r in shed)
    allowed = sum(1 for _, r in answers if r.status_code == 200)
    assert len(narrow.llm_received()) == allowed, "every forwarded request was judged and allowed"
    time.sleep(0.3)
    logged = narrow.decisions()[before:]
    assert sum(1 for d in logged if d.get("refusal") == "overloaded") == len(shed)
