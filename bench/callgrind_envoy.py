"""A hot check through Envoy, counted by callgrind: instructions per check and the code it runs,
for agent-authz (verdict cache hot) and the allow-all ext_authz server, side by side.

    .tools/venv/bin/python bench/callgrind_envoy.py [--seconds 8]

Why it exists: bench/callgrind.py counts agent-authz fed straight by grpc_load; issue 17's hot
CPU target is measured through Envoy, pinned, where Envoy and the upstream run on the same CPU
between two checks. This starts the bench's own stack (bench.Bench: Envoy, Cerbos, the upstream,
the allow-all server, agent-authz with bench/agent-authz-cached.yaml), restarts agent-authz and
the allow-all server under `valgrind --tool=callgrind --dump-instr=yes`, warms each up through
Envoy with wrk, zeroes its counters, drives `--seconds` of wrk at one connection (the
repeat_cache and b_16k scenarios: the same 16 KiB chat declaring 20 tools), dumps, and prints
per check: the instructions (every thread) and the distinct 64-byte lines of code executed in
the window (every check takes the same path, so this is the code a check runs; an upper bound,
as rare work such as cache maintenance is included). Binaries: target/release, or
BENCH_BIN_DIR as for bench.py; BENCH_AGENT_AUTHZ names another agent-authz (the PGO build:
target/pgo/release/agent-authz).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import Bench, http_get, tcp_open  # noqa: E402
from callgrind import counted, instructions  # noqa: E402

# scenario id in bench.Bench.scenarios(), the process it measures
MEASURED = (("repeat_cache", "agent_authz_cached"), ("b_16k", "allow_all"))


def code_lines(dump_dir: Path) -> int:
    """Distinct 64-byte code lines with a cost in the dumps (per object file), read from
    callgrind's instruction positions (absolute `0x..`, or `+n` / `-n` from the previous)."""
    lines: dict[str, set[int]] = defaultdict(set)
    for f in dump_dir.glob("callgrind.out.*"):
        obj, addr = "?", 0
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith("ob="):
                obj = re.match(r"ob=\((\d+)\)", line).group(1)
            elif line and line[0] in "0123456789+-*":
                pos = line.split()[0]
                if pos.startswith("0x"):
                    addr = int(pos, 16)
                elif pos[0] in "+-":
                    addr += int(pos)
                lines[f.name + obj].add(addr >> 6)
    return sum(len(s) for s in lines.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8)
    args = parser.parse_args()
    bench = Bench()
    rows = []
    try:
        bench.write_files()
        bench.start()
        scenarios = {s["id"]: s for s in bench.scenarios()}
        for sid, proc in MEASURED:
            s = scenarios[sid]
            argv, env = bench.procs.how[proc]
            bench.procs.kill(proc)
            dumps = bench.run_dir / f"callgrind-{proc}"
            dumps.mkdir()
            bench.procs.spawn(proc, ["valgrind", "--tool=callgrind", f"--callgrind-out-file={dumps}/callgrind.out.%p",
                                     "--dump-line=no", "--dump-instr=yes"] + argv, env)
            if proc == "allow_all":
                bench.procs.wait_ready(proc, lambda: tcp_open(bench.ports["allow_all"]), timeout=120)
            else:
                admin = bench.ports["authz_cached_admin"]
                bench.procs.wait_ready(proc, lambda: http_get(f"http://127.0.0.1:{admin}/readyz")[0] == 200,
                                       timeout=120)
            bench.wrk(s, 1, 3)
            out = counted(bench.procs.pid(proc), dumps, lambda: bench.wrk(s, 1, args.seconds))
            errors = sum(out["errors"].values())
            if errors:
                raise SystemExit(f"{sid}: {errors} requests failed under callgrind: {out['errors']}")
            n = out["requests"]
            rows.append((sid, proc, n, instructions(dumps) / n, code_lines(dumps)))
            print(f"{sid:14} {proc:20} {n} checks: {rows[-1][3]:,.0f} instructions per check, "
                  f"{rows[-1][4]} code lines ({rows[-1][4] * 64 // 1024} KiB)", flush=True)
    finally:
        bench.procs.stop()
    print("\n| through Envoy, 1 connection | process | instructions per check | code run (64-byte lines) |\n|---|---|---|---|")
    for sid, proc, _, per_check, lines in rows:
        print(f"| {sid} | {proc} | {per_check:,.0f} | {lines:,} ({lines * 64 // 1024} KiB) |")


if __name__ == "__main__":
    main()
