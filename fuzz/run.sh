#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each) with cargo-fuzz, on the stable
# toolchain (RUSTC_BOOTSTRAP lets cargo-fuzz pass its -Z flags; no sanitizer, so no nightly std).
# The corpus lives in fuzz/corpus/<target> and is committed; a crash is saved under
# fuzz/artifacts/<target> and must become a regression test before it is deleted.
#   fuzz/run.sh            # every target, 60 s each
#   fuzz/run.sh 300 sse_events
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
seconds="${1:-60}"
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(extract_request strip_tools sse_events jwt_identity bedrock_converse_answer tool_call_answers json_prescan_differential known_tools_differential)
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  echo "==> fuzzing $target for ${seconds}s"
  cargo fuzz run --sanitizer none "$target" "corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=2048
done
