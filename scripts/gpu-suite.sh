#!/usr/bin/env bash
# The GPU machine's part of the verification. Builds NOTHING: run
# scripts/gpu-prepare.sh here first, then on the GPU machine (repo root, .carry carried):
#
#   scripts/gpu-suite.sh correctness   # test binaries, fixture + torch checks, sanitizers
#   scripts/gpu-suite.sh perf          # bench (lanes vs global-lock), bench alloc, stress, verify, serve load
#
# Results: one log per step and summary-PHASE.txt with each step's exit code, in
# /tmp/gpu-out, packed into $OUT/gpu-PHASE.tgz (the device tool returns few files).
# Exits non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
phase=${1:?usage: gpu-suite.sh correctness|perf}
out=/tmp/gpu-out/$phase
rm -rf "$out"; mkdir -p "$out"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export PATH=/usr/local/cuda/bin:$PATH
# On the GPU machine a CUDA test that cannot reach the driver FAILS instead of
# printing SKIPPED: the suite cannot pass without the GPU it is meant to test.
export LANES_REQUIRE_CUDA=1
work=/tmp/lanes-gpu
mkdir -p "$work/bin" "$work/model"
for f in .carry/bin/*.gz; do gunzip -c "$f" > "$work/bin/$(basename "$f" .gz)"; done
chmod +x "$work"/bin/*
[ -f "$work/model/model.safetensors" ] || gunzip -c .carry/model/model.safetensors.gz > "$work/model/model.safetensors"
cp .carry/model/tokenizer.json .carry/model/config.json "$work/model/"
B=$work/bin
export LANES_MODEL=$work/model LANES_FIXTURE=$PWD/.carry/fixtures/minilm_reference.jsonl
summary=$out/summary-$phase.txt
: > "$summary"
failed=0
step() { # step NAME CMD...: run, log, record the exit code, carry on
  local name=$1; shift
  local start=$SECONDS
  echo "== $name" >&2
  "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$summary" >&2
  [ "$rc" -eq 0 ] || failed=1
}
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true

fixture_texts() { python3 -c '
import json, sys
for l in open(sys.argv[1]):
    if l.strip(): print(json.dumps(json.loads(l)["text"]))' "$LANES_FIXTURE"; }

case $phase in
correctness)
  step version "$B/lanes" version --verbose
  step test-every-device "$B/every_device" --test-threads=1
  step test-runtime-faults "$B/runtime_faults" --test-threads=1
  step test-cuda-backend "$B/cuda_backend" --test-threads=1
  step test-cuda-encoder "$B/cuda_encoder" --test-threads=1
  fixture_texts > "$work/fixture.jsonl"
  for dev in cuda cpu; do
    step "embed-fixture-$dev" "$B/lanes" embed --device $dev --threads 4 --batch 8 --format jsonl \
      --input "$work/fixture.jsonl" --output "$work/embed-$dev.jsonl"
  done
  step compare-cuda-vs-fixture python3 .carry/compare.py "$work/embed-cuda.jsonl" "$LANES_FIXTURE" 0.99999 1e-5 cuda-vs-fixture
  step compare-cuda-vs-cpu python3 .carry/compare.py "$work/embed-cuda.jsonl" "$work/embed-cpu.jsonl" 0.99999 1e-5 cuda-vs-cpu
  # torch + transformers on random MiniLM-shaped weights built here.
  step torch-random-reference python3 .carry/torch_random_reference.py "$work/model" "$work/random" \
    "$LANES_FIXTURE" "$work/torch-random.jsonl" --device cuda
  step embed-random-cuda "$B/lanes" embed --model "$work/random" --device cuda --threads 4 --batch 8 \
    --format jsonl --input "$work/fixture.jsonl" --output "$work/embed-random.jsonl"
  step compare-cuda-vs-torch python3 .carry/compare.py "$work/embed-random.jsonl" "$work/torch-random.jsonl" 0.99999 1e-5 cuda-vs-torch-random
  # Sanitizers on a short multi-lane stress (every result still checked).
  for tool in memcheck racecheck; do
    step "sanitizer-$tool" compute-sanitizer --tool $tool --error-exitcode 9 \
      "$B/lanes" stress --device cuda --threads 4 --requests 3 --distinct 4 --max-batch 8 --max-len 64 --json
  done
  ;;
perf)
  step bench-verify env OUT="$out/bv" DURATION_MS=${DURATION_MS:-1000} THREADS=1,2,4,8,16,32 \
    scripts/gpu-bench-verify.sh "$B/lanes" "$work/model" "$PWD"
  step load-test env LANES_MODEL="$work/model" CONCURRENCY="1 16 64" \
    scripts/load-test.sh "$B/lanes" cuda ${LOAD_SECS:-5} --workers 8
  ;;
*) echo "unknown phase $phase" >&2; exit 2 ;;
esac
cat "$summary"
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/gpu-$phase.tgz" -C "$out" .
  cp "$summary" "$OUT/"
fi
exit $failed
