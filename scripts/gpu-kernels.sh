#!/usr/bin/env bash
# The GPU machine's check of the multi-dtype kernels (issue 11). Builds NOTHING.
#
#   scripts/gpu-kernels.sh stage [K]   HERE (no GPU needed): builds and stages into K
#                                      (default .carry/kernels, git-ignored):
#     K/bin/cuda_kernels.gz, K/bin/cuda_encoder.gz   test binaries (cargo test --no-run)
#     K/bin/forward_bench.gz                         crates/lanes-nn/examples/forward_bench.rs
#     K/model/{model.safetensors.gz,tokenizer.json,config.json}   (scripts/gpu/prune_vocab.py)
#     K/minilm_reference.jsonl, K/torch_peer.py
#   scripts/gpu-kernels.sh [K]         on the GPU machine (repo root, K carried)
#
# Steps (each logged; summary.txt has every exit code):
#   1. cuda_kernels (LANES_REQUIRE_CUDA=1): every fused kernel and gemm_ex per dtype vs the CPU,
#      and the f16 / bf16 forward vs f32 on the fixture texts (cosine >= 0.9999 / 0.999)
#   2. cuda_encoder: the f32 path against the fixture (unchanged tolerances)
#   3. compute-sanitizer memcheck and racecheck on cuda_kernels
#   4. forward_bench: ms per forward at batch 512 x 128 tokens and batch 1, per dtype, plus
#      per-kernel times from nsys when it is installed
#   5. torch peer (scripts/gpu/torch_peer.py): the issue's five configurations and torch's
#      fixture embeddings per dtype
# SKIP="racecheck nsys compile encoder float32-embed bfloat16-embed" leaves those steps out (device time);
# PEER_SECONDS (default 3) is each torch benchmark's timed span.
# Results go to $OUT/kernels.tgz (and summary.txt, bench.jsonl, peer.jsonl beside it).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = stage ]; then
  set -e
  K=${2:-.carry/kernels}
  rm -rf "$K/bin"; mkdir -p "$K/bin" "$K/model"
  cargo build --release -p lanes-nn --example forward_bench
  cp "${CARGO_TARGET_DIR:-target}/release/examples/forward_bench" "$K/bin/"
  cargo test --release -p lanes-nn --test cuda_kernels --test cuda_encoder --no-run --message-format=json 2>/dev/null \
    | python3 -c '
import json, sys, shutil, os
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        shutil.copy(m["executable"], os.path.join(sys.argv[1], m["target"]["name"]))
' "$K/bin"
  strip --strip-debug "$K"/bin/* 2>/dev/null || true
  gzip -f "$K"/bin/*
  fixture=crates/lanes-nn/tests/fixtures/minilm_reference.jsonl
  if [ ! -f "$K/model/model.safetensors.gz" ]; then
    python3 scripts/gpu/prune_vocab.py models/all-MiniLM-L6-v2/model.safetensors "$K/model/model.safetensors" "$fixture"
    gzip -f "$K/model/model.safetensors"
  fi
  cp models/all-MiniLM-L6-v2/tokenizer.json models/all-MiniLM-L6-v2/config.json "$K/model/"
  cp "$fixture" scripts/gpu/torch_peer.py "$K/"
  du -sh "$K"
  exit 0
fi
K=${1:-.carry/kernels}
o=/tmp/kernels-out
rm -rf "$o"; mkdir -p "$o"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export PATH=/usr/local/cuda/bin:$PATH
work=/tmp/kernels-work
mkdir -p "$work/bin" "$work/model"
for f in "$K"/bin/*.gz; do gunzip -c "$f" > "$work/bin/$(basename "$f" .gz)"; done
chmod +x "$work"/bin/*
[ -f "$work/model/model.safetensors" ] || gunzip -c "$K/model/model.safetensors.gz" > "$work/model/model.safetensors"
cp "$K"/model/*.json "$work/model/"
B=$work/bin
export LANES_MODEL=$work/model LANES_FIXTURE=$PWD/$K/minilm_reference.jsonl LANES_REQUIRE_CUDA=1
# Figures land in $OUT as they come (a run cut short still returns them); the logs
# are packed into $OUT/kernels.tgz on exit.
res=${OUT:-$o}
summary=$res/summary.txt
: > "$summary"
[ -n "${OUT:-}" ] && trap 'tar czf "$OUT/kernels.tgz" -C "$o" . 2>/dev/null' EXIT
failed=0
skip() { case " ${SKIP:-} " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
step() { # step NAME CMD...
  local name=$1; shift
  local start=$SECONDS
  "$@" > "$o/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$summary" >&2
  [ "$rc" -eq 0 ] || failed=1
}
nvidia-smi > "$o/nvidia-smi.txt" 2>&1 || true

step test-cuda-kernels "$B/cuda_kernels" --test-threads=1 --nocapture
skip encoder || step test-cuda-encoder "$B/cuda_encoder" --test-threads=1
step sanitizer-memcheck compute-sanitizer --tool memcheck --error-exitcode 9 "$B/cuda_kernels" --test-threads=1
# racecheck: cuBLAS's own kernels (nvjet_*, used by gemm_ex for f16 / bf16) report
# shared-memory hazards of their own; fail only on a hazard in any other kernel.
racecheck_ours() {
  compute-sanitizer --tool racecheck "$B/cuda_kernels" --test-threads=1 > "$o/racecheck-raw.log" 2>&1
  local rc=$?
  grep -E "Race reported|ERROR SUMMARY|RACECHECK SUMMARY" "$o/racecheck-raw.log"
  if grep -E "Race reported" "$o/racecheck-raw.log" | grep -v nvjet | grep -q .; then return 9; fi
  return $rc
}
skip racecheck || step sanitizer-racecheck racecheck_ours
if [ -x "$B/forward_bench" ]; then
  step forward-bench sh -c "'$B/forward_bench' > '$res/bench.jsonl'"
  if command -v nsys > /dev/null && ! skip nsys; then
    for dt in float32 float16; do
      step "nsys-$dt" nsys profile -o "$o/nsys-$dt" --force-overwrite true --stats=true \
        "$B/forward_bench" --only "$dt" --batch 512 --iters 5
    done
    rm -f "$o"/nsys-*.nsys-rep "$o"/nsys-*.sqlite
  fi
fi
for m in fp16-b512 bf16-b512 fp16-b1-graph fp32-b512 fp32-b1; do
  step "torch-$m" sh -c "timeout 120 python3 '$K/torch_peer.py' bench '$work/model' $m --seconds ${PEER_SECONDS:-3} >> '$res/peer.jsonl'"
done
skip compile || step torch-fp32-b512-compile sh -c "timeout 240 python3 '$K/torch_peer.py' bench '$work/model' fp32-b512-compile --seconds ${PEER_SECONDS:-3} >> '$res/peer.jsonl'"
for dt in float32 float16 bfloat16; do
  skip "${dt}-embed" && continue
  step "torch-embed-$dt" sh -c "timeout 120 python3 '$K/torch_peer.py' embed '$work/model' '$LANES_FIXTURE' '$o/torch-embed-$dt.jsonl' --dtype $dt >> '$res/peer.jsonl'"
done
cat "$summary"
[ -f "$res/bench.jsonl" ] && cat "$res/bench.jsonl"
[ -f "$res/peer.jsonl" ] && cat "$res/peer.jsonl"
exit $failed
