#!/usr/bin/env bash
# The whole test suite: what CI runs and what the README calls "run the tests".
# Needs: cargo (stable) with clippy, python3 + pip (to fetch the model once).
#
# The build is the one scripts/run.sh makes (`cargo test --workspace --release`,
# same profile, features and target dir), so running one after the other builds
# nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

echo "== model (fetched once into models/) =="
./scripts/fetch-model.sh

echo "== format =="
cargo fmt --all -- --check

echo "== clippy (every target, warnings are errors) =="
cargo clippy --workspace --all-targets --release -- -D warnings

echo "== unit, integration, property and fault tests (CPU backend; CUDA cases report SKIPPED without a driver unless LANES_REQUIRE_CUDA=1) =="
cargo test --workspace --release

echo "== loom models (every interleaving up to 2 preemptions) =="
RUSTFLAGS="--cfg lanes_loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=2 \
  cargo test --release -p lanes --no-default-features --lib loom_

echo "== shuttle models (random + PCT schedules) =="
RUSTFLAGS="--cfg lanes_shuttle" CARGO_TARGET_DIR=target/shuttle \
  cargo test --release -p lanes --no-default-features --lib shuttle_
