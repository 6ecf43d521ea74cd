"""Does the decision console cost a check anything? (issue 16)

    cargo build --release --bin agent-authz --example grpc_load
    .tools/venv/bin/python bench/console.py        # ~2 min; writes bench/CONSOLE_RESULTS.md

Starts the e2e stack (real Cerbos, Envoy, agent-authz from target/release) with
`console.retain: 10000`, fills the ring past its size (drops counted), then sends ext_authz
checks straight to agent-authz with examples/grpc_load, paced at 1,000 checks/s (10 callers,
one call each per 10 ms), alternately without a viewer and with one (an auditor streaming
/api/v1/decisions/stream, listing 500 records and reading the overview of all 10,000 once a
second). Reports latency percentiles per run, the events the viewer received, and
agent-authz's resident memory after each run (it must stay bounded: the ring holds 10,000).
Numbers, not assertions: the same machine runs other work, so read them with the noise
between the runs of the same kind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "e2e"))
os.environ.setdefault("AGENT_AUTHZ_BIN", str(REPO / "target" / "release" / "agent-authz"))

from stack import Stack  # noqa: E402

GRPC_LOAD = REPO / "target" / "release" / "examples" / "grpc_load"
RETAIN = 10_000
CALLERS, INTERVAL_US = 10, 10_000  # 10 callers x 100 calls/s = 1,000 checks/s
RUN_SECONDS, RUN_REQUESTS = 15, 15_000
ROUNDS = 3


def grpc_load(stack: Stack, spec: Path, *, concurrency: int, requests: int, interval_us: int, warmup: int = 0) -> dict:
    argv = [str(GRPC_LOAD), "--target", "ext-authz", "--addr", f"http://127.0.0.1:{stack.ports['authz']}",
            "--spec", str(spec), "--concurrency", str(concurrency), "--requests", str(requests),
            "--max-seconds", str(RUN_SECONDS + 5), "--connections", "2", "--threads", "1",
            "--interval-us", str(interval_us), "--warmup", str(warmup)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"grpc_load failed: {done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(stack: Stack, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{stack.ports['authz_admin']}/metrics").text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class Viewer:
    """An auditor with the console open: the live stream, plus a list and the overview each second."""

    def __init__(self, stack: Stack, token: str) -> None:
        self.base = f"http://127.0.0.1:{stack.ports['authz_admin']}/api/v1"
        self.headers = {"authorization": f"Bearer {token}"}
        self.events = 0
        self.polls = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._stream, daemon=True), threading.Thread(target=self._poll, daemon=True)]

    def __enter__(self) -> "Viewer":
        for t in self.threads:
            t.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5)

    def _stream(self) -> None:
        try:
            with httpx.stream("GET", f"{self.base}/decisions/stream", headers=self.headers, timeout=None) as r:
                r.raise_for_status()
                for line in r.iter_lines():
                    if line.startswith("event: decision"):
                        self.events += 1
                    if self.stop.is_set():
                        return
        except httpx.HTTPError as e:
            if not self.stop.is_set():
                print(f"viewer stream ended: {e}", file=sys.stderr)

    def _poll(self) -> None:
        while not self.stop.wait(1.0):
            for path in ("/decisions?limit=500", "/overview"):
                httpx.get(self.base + path, headers=self.headers, timeout=10).raise_for_status()
            self.polls += 1


def main() -> None:
    for binary in (Path(os.environ["AGENT_AUTHZ_BIN"]), GRPC_LOAD):
        if not binary.exists():
            raise SystemExit(f"missing {binary}: cargo build --release --bin agent-authz --example grpc_load")
    with Stack(name="bench-console", authz_overrides={"console": {"retain": RETAIN}}) as stack:
        body = stack.dir / "chat.json"
        body.write_text(json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                                    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]}))
        spec = stack.dir / "spec.json"
        spec.write_text(json.dumps({"method": "POST", "path": "/v1/chat/completions", "host": "127.0.0.1",
                                    "headers": {"content-type": "application/json",
                                                "authorization": f"Bearer {stack.token_for('alice')}"},
                                    "body_file": str(body)}))
        pid = stack.procs["agent_authz"].popen.pid
        rss_idle = rss_kib(pid)
        fill = grpc_load(stack, spec, concurrency=8, requests=RETAIN + 2_000, interval_us=0)
        time.sleep(1)
        rss_full = rss_kib(pid)
        runs = []
        auditor = stack.mint_token("audrey", ["auditor"])
        for round_ in range(ROUNDS):
            for viewer in (False, True):
                server_cpu, viewer_cpu = cpu_s(pid), time.process_time()
                if viewer:
                    with Viewer(stack, auditor) as v:
                        r = grpc_load(stack, spec, concurrency=CALLERS, requests=RUN_REQUESTS,
                                      interval_us=INTERVAL_US, warmup=500)
                        time.sleep(0.5)
                    r["viewer_events"], r["viewer_polls"] = v.events, v.polls
                else:
                    r = grpc_load(stack, spec, concurrency=CALLERS, requests=RUN_REQUESTS,
                                  interval_us=INTERVAL_US, warmup=500)
                r["viewer"], r["round"], r["rss_kib_after"] = viewer, round_ + 1, rss_kib(pid)
                r["agent_authz_cpu_s"] = cpu_s(pid) - server_cpu
                r["viewer_client_cpu_s"] = time.process_time() - viewer_cpu
                runs.append(r)
                print(f"round {round_ + 1} viewer={'yes' if viewer else 'no '} {r['throughput_rps']:7.0f} checks/s "
                      f"p50 {r['p50_ms']:.3f} ms p99 {r['p99_ms']:.3f} ms max {r['max_ms']:.1f} ms "
                      f"rss {r['rss_kib_after'] / 1024:.1f} MiB events {r.get('viewer_events', '-')} "
                      f"cpu agent-authz {r['agent_authz_cpu_s']:.1f} s viewer {r['viewer_client_cpu_s']:.1f} s", flush=True)
        dropped = metric(stack, "agent_authz_console_records_dropped_total")
        skipped = metric(stack, "agent_authz_console_stream_skipped_total")
    results = {"retain": RETAIN, "fill": fill, "rss_kib_idle": rss_idle, "rss_kib_full": rss_full, "runs": runs,
               "console_records_dropped_total": dropped, "console_stream_skipped_total": skipped,
               "cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (REPO / "bench" / "console_results.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = ["# Decision console under load (bench/console.py)", "",
             f"{results['time']}, {results['cpus']} CPUs shared with other work. agent-authz (release), "
             f"`console.retain: {RETAIN}`, ring filled with {fill['requests']} checks first "
             f"({int(dropped)} records dropped oldest-first over the whole bench, counted). Each run: ext_authz checks straight to "
             f"agent-authz (grpc_load, {CALLERS} callers paced at one call per {INTERVAL_US // 1000} ms = "
             f"1,000 checks/s, chat with one tool, Cerbos answering), with or without an auditor streaming "
             f"the live view and reading a 500-record page and the 10,000-record overview every second.", "",
             "| round | viewer | checks/s | p50 ms | p90 ms | p99 ms | max ms | live events received | "
             "agent-authz CPU s | viewer client CPU s | RSS after (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['round']} | {'yes' if r['viewer'] else 'no'} | {r['throughput_rps']:.0f} | {r['p50_ms']:.3f} | "
                     f"{r['p90_ms']:.3f} | {r['p99_ms']:.3f} | {r['max_ms']:.1f} | {r.get('viewer_events', '–')} | "
                     f"{r['agent_authz_cpu_s']:.1f} | {r['viewer_client_cpu_s']:.1f} | {r['rss_kib_after'] / 1024:.1f} |")
    lines += ["", f"Resident memory: {rss_idle / 1024:.1f} MiB at start, {rss_full / 1024:.1f} MiB with the ring full. "
              f"Live events skipped by the viewer: {int(skipped)}.", ""]
    (REPO / "bench" / "CONSOLE_RESULTS.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
