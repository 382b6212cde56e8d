#!/usr/bin/env bash
# One device run over the merged build (issues 10-12): builds NOTHING.
#   HERE:    scripts/gpu-final.sh stage      (needs a release `cargo test --no-run` done)
#   DEVICE:  scripts/gpu-final.sh            (repo root, .carry/final carried)
# Steps: every CUDA test binary with LANES_REQUIRE_CUDA=1, fixture check of `lanes embed`,
# stress per dtype with graphs (64 threads), memcheck on the kernels test, a bench grid.
# Results: $OUT/summary.txt, $OUT/bench.jsonl, $OUT/final.tgz (every log).
set -uo pipefail
cd "$(dirname "$0")/.."
K=.carry/final
if [ "${1:-}" = stage ]; then
  set -e
  rm -rf "$K"; mkdir -p "$K/bin" "$K/model"
  cp target/release/lanes "$K/bin/"
  cargo test --release -p lanes -p lanes-nn --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys, shutil, os
want = {"every_device","cuda_backend","cuda_graphs","runtime_faults","cuda_encoder","cuda_precision","cuda_kernels"}
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in want:
        shutil.copy(m["executable"], os.path.join(sys.argv[1], m["target"]["name"]))
' "$K/bin"
  strip --strip-debug "$K"/bin/* 2>/dev/null || true
  gzip -f "$K"/bin/*
  cp .carry/kernels/model/* "$K/model/"
  cp crates/lanes-nn/tests/fixtures/minilm_reference.jsonl scripts/gpu/compare.py "$K/"
  du -sh "$K"; exit 0
fi
o=/tmp/final-out; rm -rf "$o"; mkdir -p "$o"
res=${OUT:-$o}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} PATH=/usr/local/cuda/bin:$PATH
export LANES_REQUIRE_CUDA=1
w=/tmp/final-work; mkdir -p "$w/bin" "$w/model"
for f in "$K"/bin/*.gz; do gunzip -c "$f" > "$w/bin/$(basename "$f" .gz)"; done
chmod +x "$w"/bin/*
gunzip -c "$K/model/model.safetensors.gz" > "$w/model/model.safetensors"
cp "$K"/model/*.json "$w/model/"
B=$w/bin
export LANES_MODEL=$w/model LANES_FIXTURE=$PWD/$K/minilm_reference.jsonl
summary=$res/summary.txt; : > "$summary"
[ -n "${OUT:-}" ] && trap 'tar czf "$OUT/final.tgz" -C "$o" . 2>/dev/null' EXIT
step() { local n=$1; shift; local s=$SECONDS; timeout "${LIMIT:-240}" "$@" > "$o/$n.log" 2>&1; local rc=$?
  echo "$n rc=$rc seconds=$((SECONDS - s))" | tee -a "$summary" >&2; }
nvidia-smi > "$o/nvidia-smi.txt" 2>&1
step version "$B/lanes" version --verbose
for t in every_device cuda_backend cuda_graphs runtime_faults cuda_encoder cuda_precision cuda_kernels; do
  step "test-$t" "$B/$t" --test-threads=1
done
python3 -c '
import json, sys
for l in open(sys.argv[1]):
    if l.strip(): print(json.dumps(json.loads(l)["text"]))' "$LANES_FIXTURE" > "$w/fixture.jsonl"
step embed-f32 "$B/lanes" embed --device cuda --dtype float32 --threads 4 --batch 8 --format jsonl --input "$w/fixture.jsonl" --output "$w/e32.jsonl"
step compare-f32-fixture python3 "$K/compare.py" "$w/e32.jsonl" "$LANES_FIXTURE" 0.99999 1e-5 cuda-f32-vs-fixture
step embed-f16 "$B/lanes" embed --device cuda --dtype float16 --threads 4 --batch 8 --format jsonl --input "$w/fixture.jsonl" --output "$w/e16.jsonl"
step compare-f16-fixture python3 "$K/compare.py" "$w/e16.jsonl" "$LANES_FIXTURE" 0.9999 1e-2 cuda-f16-vs-fixture
for dt in float32 float16 bfloat16; do
  step "stress-$dt" "$B/lanes" stress --device cuda --dtype $dt --threads 64 --requests ${REQUESTS:-1000} --max-batch 8 --max-len 64 --json
done
step memcheck-kernels compute-sanitizer --tool memcheck --error-exitcode 9 "$B/cuda_kernels" --test-threads=1
step bench-b1 "$B/lanes" bench --device cuda --dtype float32,float16 --threads 1,16 --batch 1 --seq 128 --duration-ms 1500 --json
step bench-big "$B/lanes" bench --device cuda --dtype float32,float16,bfloat16 --threads 1 --batch 128,512 --seq 128 --duration-ms 2000 --modes lanes --json
grep -h '^{' "$o"/bench-*.log > "$res/bench.jsonl" 2>/dev/null
cat "$summary"
