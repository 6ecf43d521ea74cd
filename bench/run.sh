#!/usr/bin/env bash
# The benchmark, in one command:  bench/run.sh
#   1. scripts/setup.sh (Envoy, Cerbos, the Python venv) and wrk (apt) when missing,
#   2. cargo build --release (agent-authz) and cargo build --release --examples
#      (examples/allow_all.rs, examples/grpc_load.rs, examples/bench_upstream.rs),
#   3. bench/bench.py: starts the real Cerbos, Envoy, agent-authz (cache off and on), the
#      allow-all ext_authz server and the upstream on free 127.0.0.1 ports, drives bounded load
#      (wrk through Envoy; grpc_load against Cerbos and against agent-authz), and writes
#      bench/RESULTS.md and bench/results.json.
# Knobs (environment) are listed at the top of bench/bench.py; see bench/README.md.
#   --with-litellm   also run the LiteLLM peer (BENCH_LITELLM=1): installs litellm[proxy] into
#                    .tools/litellm-venv on first use (~750 MiB, about a minute), adds ~1 min.
set -euo pipefail

for arg in "$@"; do
  case "$arg" in
    --with-litellm) export BENCH_LITELLM=1 ;;
    -h|--help) sed -n '2,12s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "bench/run.sh: unknown argument $arg (known: --with-litellm)" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CERBOS_NO_TELEMETRY=1
started=$(date +%s)

step() { printf '[bench/run.sh] %s\n' "$*"; }

scripts/setup.sh

if ! command -v wrk >/dev/null 2>&1; then
  step "wrk: installing (apt-get install -y wrk)"
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq wrk >/dev/null
fi

step "cargo build --release"
cargo build --release
step "cargo build --release --examples"
cargo build --release --examples
built=$(date +%s)
step "build done in $((built - started)) s"

.tools/venv/bin/python bench/bench.py
step "total $(( $(date +%s) - started )) s (build $((built - started)) s)"
