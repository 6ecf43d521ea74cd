#!/usr/bin/env bash
# The profile-guided (PGO) release build of agent-authz:  scripts/build-pgo.sh
#   1. scripts/setup.sh --bench (Envoy, Cerbos, the Python venv, wrk, rustup's llvm-profdata),
#   2. the bench's load generators and upstream (cargo build --release --examples),
#   3. agent-authz instrumented (-Cprofile-generate), in target/pgo-instrumented,
#   4. bench/pgo_train.py: the instrumented build behind the bench's stack (real Cerbos and
#      Envoy on 127.0.0.1), every kind of request the bench knows for a few seconds each,
#   5. llvm-profdata merge of what it wrote, into target/pgo/agent-authz-<sha256>.profdata,
#   6. agent-authz again with -Cprofile-use, in target/pgo: target/pgo/release/agent-authz.
# Same code, same Cargo.toml release profile (fat LTO, one codegen unit); only the layout and
# the optimiser's choices follow the profile. ~17 min on 2 cores from a fresh clone (the
# examples, agent-authz instrumented and profile-guided: three release builds; ~3 min of load).
# The profile's file name is its digest, so a new profile rebuilds every crate with it.
# Knobs: PGO_TRAIN_SECONDS (per scenario and concurrency, default 3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CERBOS_NO_TELEMETRY=1
step() { printf '[build-pgo] %s\n' "$*"; }

bash scripts/setup.sh --bench

step "cargo build --release --examples (the training load's upstream and load generators)"
cargo build --release --examples

INSTRUMENTED="$ROOT/target/pgo-instrumented"
RAW="$INSTRUMENTED/profiles"
step "instrumented build (-Cprofile-generate) into $INSTRUMENTED"
RUSTFLAGS="-Cprofile-generate=$RAW" cargo build --release --locked --bin agent-authz --target-dir "$INSTRUMENTED"
# Only the training's profile: build scripts and proc macros, instrumented too, wrote theirs
# while building.
rm -rf "$RAW"
mkdir -p "$RAW"

step "training (bench/pgo_train.py)"
BENCH_AGENT_AUTHZ="$INSTRUMENTED/release/agent-authz" \
  .tools/venv/bin/python bench/pgo_train.py --seconds "${PGO_TRAIN_SECONDS:-3}"
shopt -s nullglob
raw=("$RAW"/*.profraw)
[[ ${#raw[@]} -gt 0 ]] || { echo "[build-pgo] ERROR: the instrumented agent-authz wrote no profile" >&2; exit 1; }

PROFDATA="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata"
mkdir -p target/pgo
"$PROFDATA" merge -o target/pgo/merged.profdata "${raw[@]}"
digest="$(sha256sum target/pgo/merged.profdata | cut -c1-16)"
profile="$ROOT/target/pgo/agent-authz-$digest.profdata"
find target/pgo -maxdepth 1 -name 'agent-authz-*.profdata' ! -name "$(basename "$profile")" -delete
mv target/pgo/merged.profdata "$profile"
step "profile: $profile (${#raw[@]} raw profiles merged)"

step "profile-guided build (-Cprofile-use) into target/pgo"
RUSTFLAGS="-Cprofile-use=$profile" cargo build --release --locked --bin agent-authz --target-dir target/pgo
step "done: target/pgo/release/agent-authz"
