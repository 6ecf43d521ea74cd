#!/usr/bin/env bash
# Every test: fmt, clippy, unit + Cerbos integration tests, Cerbos policy tests, Envoy config
# validation, and the end-to-end suite (real Envoy, Cerbos, openai and mcp clients).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

stage() { printf '\n==> %s\n' "$*"; }

stage "setup (scripts/setup.sh)"
bash scripts/setup.sh

stage "cargo fmt --check"
cargo fmt --all -- --check

stage "cargo clippy (warnings are errors)"
cargo clippy --all-targets -- -D warnings

stage "cargo build"
cargo build

stage "fuzz targets compile (fuzz/run.sh runs them, outside CI)"
# cargo-fuzz builds with --cfg fuzzing; checking the same way here keeps the targets from
# rotting when an API they call changes (they are not part of the crate's own build).
RUSTFLAGS="--cfg fuzzing" cargo check --manifest-path fuzz/Cargo.toml --bins

stage "cargo test (unit + Cerbos integration against the real PDP)"
CERBOS_BIN=.tools/bin/cerbos cargo test

stage "cerbos compile policies/ (policy test suites)"
CERBOS_NO_TELEMETRY=1 .tools/bin/cerbos compile --no-color policies/

stage "envoy --mode validate (every file in envoy/)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
.tools/venv/bin/python - "$tmp/jwks.json" <<'PY'
import json, sys
sys.path.insert(0, "e2e")
from stack import jwk_for, new_rsa_key
json.dump({"keys": [jwk_for(new_rsa_key())]}, open(sys.argv[1], "w"))
PY
for config in envoy/*.yaml; do
  rendered="$tmp/$(basename "$config")"
  sed "s#/etc/agent-authz/jwks.json#$tmp/jwks.json#g" "$config" > "$rendered"
  if ! out="$(.tools/bin/envoy --mode validate -c "$rendered" 2>&1)"; then
    printf '%s\n' "$out" | tail -n 20
    echo "envoy rejected $config" >&2
    exit 1
  fi
  echo "ok: $config"
done

stage "bench/ and the PGO build still parse (they run outside CI: bench/run.sh, scripts/build-pgo.sh)"
for config in bench/agent-authz.yaml bench/agent-authz-cached.yaml; do
  target/debug/agent-authz validate --config "$config"
done
if ! out="$(.tools/bin/envoy --mode validate -c bench/envoy.yaml 2>&1)"; then
  printf '%s\n' "$out" | tail -n 20
  echo "envoy rejected bench/envoy.yaml" >&2
  exit 1
fi
.tools/venv/bin/python -m py_compile bench/*.py
for script in bench/run.sh scripts/*.sh; do bash -n "$script"; done
echo "ok: bench/ configurations, scripts"

stage "end-to-end tests (pytest e2e/tests)"
.tools/venv/bin/pytest -q e2e/tests -p no:cacheprovider

stage "all stages passed"
