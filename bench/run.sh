#!/usr/bin/env bash
# The benchmark, in one command:  bench/run.sh
#   1. scripts/setup.sh --bench (Envoy, Cerbos, the Python venv, wrk, taskset, llvm-profdata),
#   2. agent-authz's profile-guided release build (scripts/build-pgo.sh, ~17 min: the build users
#      are told to deploy) and cargo build --release --examples (examples/allow_all.rs,
#      ask_cerbos.rs, grpc_load.rs, sse_load.rs, bench_upstream.rs: the baselines are plain),
#   3. bench/bench.py: starts the real Cerbos, Envoy, agent-authz (cache off and on), the
#      allow-all ext_authz server and the upstream on free 127.0.0.1 ports, drives bounded load
#      (wrk through Envoy; grpc_load against Cerbos and against agent-authz; sse_load for
#      streamed answers), and writes bench/RESULTS.md and bench/results.json.
# Knobs (environment) are listed at the top of bench/bench.py; see bench/README.md.
#   --pin            issue 17's view: the BENCH_ONLY=targets selection twice, pinned (every
#                    server on CPU 0, the load generators on CPU 1, taskset; Envoy one worker)
#                    and unpinned, into one RESULTS.md with both side by side and the
#                    comparison with the bench/results.json it replaces (~12 min after the build).
#   --no-pgo         measure the plain `cargo build --release` of agent-authz instead.
#   --with-litellm   also run the LiteLLM peer (BENCH_LITELLM=1): installs litellm[proxy] into
#                    .tools/litellm-venv on first use (~750 MiB, about a minute), adds ~1 min.
# With BENCH_BIN_DIR set (prebuilt binaries: agent-authz and the examples), nothing is built.
set -euo pipefail

PIN=0
PGO=1
for arg in "$@"; do
  case "$arg" in
    --pin) PIN=1 ;;
    --no-pgo) PGO=0 ;;
    --with-litellm) export BENCH_LITELLM=1 ;;
    -h|--help) sed -n '2,21s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "bench/run.sh: unknown argument $arg (known: --pin, --no-pgo, --with-litellm)" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CERBOS_NO_TELEMETRY=1
started=$(date +%s)

step() { printf '[bench/run.sh] %s\n' "$*"; }

scripts/setup.sh --bench

if [[ -n "${BENCH_BIN_DIR:-}" ]]; then
  step "prebuilt binaries in $BENCH_BIN_DIR: no build"
elif [[ $PGO -eq 1 ]]; then
  step "scripts/build-pgo.sh (agent-authz, profile-guided; the examples plain)"
  scripts/build-pgo.sh
  export BENCH_AGENT_AUTHZ="$ROOT/target/pgo/release/agent-authz" BENCH_BUILD=pgo
else
  step "cargo build --release"
  cargo build --release
  step "cargo build --release --examples"
  cargo build --release --examples
  export BENCH_BUILD=release
fi
built=$(date +%s)
step "build done in $((built - started)) s"

if [[ $PIN -eq 0 ]]; then
  .tools/venv/bin/python bench/bench.py
else
  # Both modes of the same selection, one after the other, then one report of both.
  out="${BENCH_OUT:-bench}"
  work=$(mktemp -d "${TMPDIR:-/tmp}/agent-authz-bench-pin.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  compare=()
  if [[ -f "$out/results.json" ]]; then
    cp "$out/results.json" "$work/previous.json"
    compare=(--compare "$work/previous.json")
  fi
  export BENCH_ONLY="${BENCH_ONLY:-targets}"
  # Each mode takes ~5-6 min; repeats of runs measured while the host was slow may add at most
  # 2 min to each, so that the whole stays well within 25 min.
  export BENCH_RETRY_SECONDS="${BENCH_RETRY_SECONDS:-120}"
  step "pinned run (servers on CPU ${BENCH_PIN_SERVERS:-0}, load generators on CPU ${BENCH_PIN_LOAD:-1})"
  BENCH_PIN=1 BENCH_OUT="$work/pinned" .tools/venv/bin/python bench/bench.py
  step "unpinned run"
  BENCH_PIN=0 BENCH_OUT="$work/unpinned" .tools/venv/bin/python bench/bench.py
  .tools/venv/bin/python bench/report.py --combine pinned="$work/pinned/results.json" \
    unpinned="$work/unpinned/results.json" "${compare[@]}" --out "$out" --command "bench/run.sh --pin"
fi
step "total $(( $(date +%s) - started )) s (build $((built - started)) s)"
