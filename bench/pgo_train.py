#!/usr/bin/env python3
"""The training load of the profile-guided (PGO) release build. scripts/build-pgo.sh builds an
instrumented agent-authz, runs it under this load, and builds the release binary again with the
profile the instrumented one wrote.

PGO lays code out and optimises it by how often it ran here: what ran most is kept together and
inlined, and what never ran is treated as cold (optimised for size, moved away). So this load
runs every kind of request the bench knows, each for the same few seconds, not only the
bench's targets: the OpenAI chat bodies from 1 KiB to 1 MiB, cache on and off, one principal and
a thousand, a denied model (403), MCP tools/call, the other dialects (Anthropic Messages, OpenAI
Responses, Gemini, Bedrock Converse, Azure OpenAI chat, the bodies bench/callgrind.py
--dialects counts), and streamed answers through the response leg (text deltas, a judged tool
call, cache on and off). Through the bench's own stack (bench/bench.py's Bench: the real Cerbos,
Envoy, the upstream), unpinned, one connection and sixteen.

Every request must be answered as the bench expects (200, or 403 for the denied model): a
profile of error paths would optimise the wrong code, so a wrong answer fails the training.

    BENCH_AGENT_AUTHZ=<instrumented agent-authz> .tools/venv/bin/python bench/pgo_train.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# The training runs every scenario, unpinned, whatever the caller's bench settings.
for knob in ("BENCH_ONLY", "BENCH_PIN", "BENCH_LITELLM"):
    os.environ.pop(knob, None)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (  # noqa: E402
    AGENT_AUTHZ,
    SSE_DELTAS,
    SSE_TEXT_EXPECT,
    SSE_TOOL_EXPECT,
    Bench,
    BenchError,
    answered_as_expected,
    log,
)
from callgrind import DIALECT_SCENARIOS  # noqa: E402

CONCURRENCY = (1, 16)


def dialect_scenarios(bench: Bench) -> list[dict]:
    """The other dialects' requests, each through the cached and the uncached instance."""
    out = []
    for i, (title, body, path, headers, _template) in enumerate(DIALECT_SCENARIOS):
        name = f"dialect_{i}"
        file = bench.run_dir / f"{name}.json"
        file.write_bytes(body())
        bench.files[name] = file
        for cached in (True, False):
            out.append({"id": f"{name}_{'cache' if cached else 'nocache'}", "title": title, "group": "authz",
                        "listener": "authz_cached" if cached else "authz", "body": name, "path": path,
                        "headers": headers, "tokens": "fixed", "expect": 200,
                        "target": "agent_authz_cached" if cached else "agent_authz", "base": "dialect",
                        "cerbos": f"{name}_question", "cached": cached})
    return out


def drive(bench: Bench, scenario: dict, concurrency: int, seconds: int) -> None:
    out = bench.wrk(scenario, concurrency, seconds)
    if not out["requests"] or not answered_as_expected(scenario, out):
        raise BenchError(f"training: {scenario['id']} c={concurrency}: {out['requests']} requests, errors {out['errors']} "
                         f"(expected {scenario['expect']} for every one)\n" + bench.procs.tail(scenario["target"]))
    log(f"train {scenario['id']:<24} c={concurrency:<3} {out['requests']:7d} requests")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=3, help="per scenario and concurrency (default 3)")
    args = parser.parse_args()
    if not AGENT_AUTHZ.exists():
        print(f"pgo_train: no agent-authz at {AGENT_AUTHZ} (set BENCH_AGENT_AUTHZ)", file=sys.stderr)
        return 2
    bench = Bench()
    try:
        bench.write_files()
        bench.start()
        scenarios = [s for s in bench.scenarios() if s["group"] == "authz"] + dialect_scenarios(bench)
        bench.sanity(scenarios)
        for s in scenarios:
            for c in CONCURRENCY:
                drive(bench, s, c, args.seconds)
        bench.sse_sanity()
        for listener in ("sse_on", "sse_on_uncached", "sse_off"):
            for answer, expect in ((f"text:{SSE_DELTAS}", SSE_TEXT_EXPECT), ("tool", SSE_TOOL_EXPECT)):
                r = bench.sse_load(listener, answer, 0, expect, 100000, args.seconds)
                if r["errors"] or not r["requests"]:
                    raise BenchError(f"training: SSE {listener} {answer}: {r['errors']} errors, "
                                     f"{r.get('first_error')}")
                log(f"train sse {listener:<16} {answer:<9} {r['requests']:7d} answers")
        return 0
    except BenchError as e:
        print(f"pgo_train: {e}", file=sys.stderr)
        print(f"pgo_train: logs kept in {bench.run_dir}", file=sys.stderr)
        return 1
    finally:
        # SIGTERM: agent-authz shuts down and exits, which is when it writes its profile.
        bench.procs.stop()


if __name__ == "__main__":
    sys.exit(main())
