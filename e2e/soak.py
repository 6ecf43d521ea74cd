"""A bounded soak: steady load through the real stack for SOAK_SECONDS (default 600), sampling
agent-authz's resident memory, then a check that it stayed flat and that every answer was the
expected one (allowed model 200, denied model 403, MCP refund over the limit refused).

    .tools/venv/bin/python e2e/soak.py            # 10 minutes
    SOAK_SECONDS=120 .tools/venv/bin/python e2e/soak.py

Not part of the test suite (it takes minutes); run it before a release. Exit status 0 on
success, 1 on a failure, with a one-line summary per sample and a final verdict."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stack import Stack  # noqa: E402

SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
THREADS = int(os.environ.get("SOAK_THREADS", "4"))
WARMUP = min(30.0, SECONDS / 5)
# Memory may grow this much after warm-up (allocator noise, metrics label sets) and no more.
MAX_GROWTH_MIB = float(os.environ.get("SOAK_MAX_GROWTH_MIB", "16"))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    with Stack(name="soak") as stack:
        pid = stack.procs["agent_authz"].popen.pid
        tokens = [stack.token_for("alice", jti=str(i)) for i in range(50)]
        wrong: list[str] = []
        counts = {"allowed": 0, "denied": 0, "mcp_refused": 0}
        lock = threading.Lock()
        end = time.monotonic() + SECONDS

        def worker(n: int) -> None:
            i = n
            with httpx.Client(timeout=10) as client:
                while time.monotonic() < end:
                    i += 1
                    token = tokens[i % len(tokens)]
                    headers = {"authorization": f"Bearer {token}"}
                    kind = i % 3
                    if kind == 0:
                        r = client.post(f"{stack.llm_base_url}/chat/completions", headers=headers,
                                        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
                        ok, key = r.status_code == 200, "allowed"
                    elif kind == 1:
                        r = client.post(f"{stack.llm_base_url}/chat/completions", headers=headers,
                                        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
                        ok, key = r.status_code == 403, "denied"
                    else:
                        body = {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {
                            "name": "refund", "arguments": {"ticket_id": "T-100", "amount_cents": 10_000_000}}}
                        r = client.post(stack.mcp_url, json=body, headers={
                            **headers, "accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-11-25"})
                        ok, key = r.status_code == 200 and "error" in r.json(), "mcp_refused"
                    with lock:
                        if ok:
                            counts[key] += 1
                        elif len(wrong) < 20:
                            wrong.append(f"{key}: {r.status_code} {r.text[:120]}")

        samples: list[tuple[float, float]] = []
        with ThreadPoolExecutor(THREADS) as pool:
            for n in range(THREADS):
                pool.submit(worker, n)
            start = time.monotonic()
            while time.monotonic() < end:
                time.sleep(min(10.0, max(0.1, end - time.monotonic())))
                t, rss = time.monotonic() - start, rss_mib(pid)
                samples.append((t, rss))
                print(f"t={t:6.0f}s rss={rss:7.1f} MiB {json.dumps(counts)}", flush=True)
        executions = len(stack.mcp_executions())
        after_warmup = [rss for t, rss in samples if t >= WARMUP] or [samples[-1][1]]
        growth = after_warmup[-1] - after_warmup[0]
        alive = stack.procs["agent_authz"].popen.poll() is None
        print(f"requests: {json.dumps(counts)}; wrong answers: {len(wrong)}; refunds executed: {executions}")
        print(f"rss after warm-up: {after_warmup[0]:.1f} -> {after_warmup[-1]:.1f} MiB (growth {growth:+.1f}, limit {MAX_GROWTH_MIB})")
        for line in wrong:
            print("  wrong:", line)
        ok = alive and not wrong and executions == 0 and growth <= MAX_GROWTH_MIB and sum(counts.values()) > 0
        print("SOAK PASSED" if ok else "SOAK FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
