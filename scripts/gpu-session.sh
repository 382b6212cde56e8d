#!/usr/bin/env bash
# One device lease in phases over a build made HERE (the device builds nothing).
#   HERE:    scripts/gpu-session.sh stage    (after `cargo build --release` and
#            `cargo test --release --no-run`; needs .carry/kernels/model from
#            `scripts/gpu-kernels.sh stage`: the vocabulary-pruned model that fits
#            the 64 MiB carry)
#   DEVICE:  scripts/gpu-session.sh check    every CUDA test binary (LANES_REQUIRE_CUDA=1),
#                                            fixture checks of `lanes embed` per dtype,
#                                            stress per dtype (64 threads x REQUESTS),
#                                            memcheck + racecheck on the kernel tests
#            scripts/gpu-session.sh bench    the bench grid (b1 x 1/16 threads, b128/b512),
#                                            f16 b512 with LANES_CUBLASLT=off beside it,
#                                            and the torch peer in the same lease
#            scripts/gpu-session.sh probe    batch-1 scaling and launch cases (default and
#                                            CUDA_DEVICE_MAX_CONNECTIONS=32), per-op figures
#            scripts/gpu-session.sh soak-start MINUTES
#                                            `scripts/soak.sh --device cuda` detached
#                                            (setsid: it outlives the call while the
#                                            machine stays warm)
#            scripts/gpu-session.sh soak-wait [SECONDS]
#                                            waits for the soak's summary (or reports
#                                            progress) and copies it to $OUT
# Every phase writes $OUT/<phase>-summary.txt (one `NAME rc= seconds=` line a step),
# its figures as JSONL, and $OUT/<phase>-logs.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
K=.carry/session
if [ "${1:-}" = stage ]; then
  set -e
  rm -rf "$K"; mkdir -p "$K/bin" "$K/model"
  cp target/release/lanes "$K/bin/"
  cargo test --release -p lanes -p lanes-nn --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys, shutil, os
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"].startswith("cuda_"):
        shutil.copy(m["executable"], os.path.join(sys.argv[1], m["target"]["name"]))
' "$K/bin"
  [ -x target/release/examples/forward_bench ] && cp target/release/examples/forward_bench "$K/bin/"
  strip --strip-debug "$K"/bin/* 2>/dev/null || true
  gzip -f "$K"/bin/*
  cp .carry/kernels/model/* "$K/model/"
  cp crates/lanes-nn/tests/fixtures/minilm_reference.jsonl "$K/"
  du -sh "$K"; ls "$K/bin"; exit 0
fi

phase=${1:?usage: gpu-session.sh stage|check|bench|probe|soak-start MINUTES|soak-wait [SECONDS]}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} PATH=/usr/local/cuda/bin:$PATH
export LANES_REQUIRE_CUDA=1
w=/tmp/session-work
if [ ! -f "$w/ready" ]; then
  mkdir -p "$w/bin" "$w/model"
  for f in "$K"/bin/*.gz; do gunzip -c "$f" > "$w/bin/$(basename "$f" .gz)"; done
  chmod +x "$w"/bin/*
  gunzip -c "$K/model/model.safetensors.gz" > "$w/model/model.safetensors"
  cp "$K"/model/*.json "$w/model/"
  python3 -c '
import json, sys
for l in open(sys.argv[1]):
    if l.strip(): print(json.dumps(json.loads(l)["text"]))' "$K/minilm_reference.jsonl" > "$w/fixture.jsonl"
  touch "$w/ready"
fi
B=$w/bin
export LANES_MODEL=$w/model LANES_FIXTURE=$PWD/$K/minilm_reference.jsonl
o=/tmp/session-logs/$phase; rm -rf "$o"; mkdir -p "$o"
res=${OUT:-$o}
summary=$res/$phase-summary.txt; : > "$summary"
[ -n "${OUT:-}" ] && trap 'tar czf "$OUT/$phase-logs.tgz" -C "$o" . 2>/dev/null' EXIT
failed=0
step() { local n=$1; shift; local s=$SECONDS; timeout "${LIMIT:-240}" "$@" > "$o/$n.log" 2>&1; local rc=$?
  echo "$n rc=$rc seconds=$((SECONDS - s))" | tee -a "$summary" >&2; [ "$rc" -eq 0 ] || failed=1; }
# racecheck: cuBLAS's own kernels (nvjet_*, and cuBLASLt's) report shared-memory
# hazards of their own; fail only on a hazard in any other kernel.
racecheck_ours() {
  compute-sanitizer --tool racecheck "$@" > "$o/racecheck-raw-$(basename "$1").log" 2>&1
  local rc=$?
  # A filter that matches no test of this binary: nothing ran, nothing to check.
  if grep -q "^running 0 tests" "$o/racecheck-raw-$(basename "$1").log"; then
    echo "racecheck: no test of $(basename "$1") matches the filter (skipped)"; return 0
  fi
  grep -E "Race reported|ERROR SUMMARY|RACECHECK SUMMARY" "$o/racecheck-raw-$(basename "$1").log" | sort | uniq -c | head -20
  if grep -E "Race reported" "$o/racecheck-raw-$(basename "$1").log" | grep -v -E "nvjet|sm90_xmma|cutlass|gemm" | grep -q .; then return 9; fi
  return $rc
}

case "$phase" in
check)
  nvidia-smi > "$res/nvidia-smi.txt" 2>&1
  step version "$B/lanes" version --verbose
  for t in "$B"/cuda_*; do step "test-$(basename "$t")" "$t" --test-threads=1; done
  for dt in float32 float16 bfloat16; do
    step "embed-$dt" "$B/lanes" embed --device cuda --dtype $dt --threads 4 --batch 8 --format jsonl --input "$w/fixture.jsonl" --output "$w/e-$dt.jsonl"
  done
  step compare-float32 python3 scripts/gpu/compare.py "$w/e-float32.jsonl" "$LANES_FIXTURE" 0.99999 1e-5 cuda-f32-vs-fixture
  step compare-float16 python3 scripts/gpu/compare.py "$w/e-float16.jsonl" "$LANES_FIXTURE" 0.9999 1e-2 cuda-f16-vs-fixture
  step compare-bfloat16 python3 scripts/gpu/compare.py "$w/e-bfloat16.jsonl" "$LANES_FIXTURE" 0.999 5e-2 cuda-bf16-vs-fixture
  for dt in float32 float16 bfloat16; do
    step "stress-$dt" "$B/lanes" stress --device cuda --dtype $dt --threads 64 --requests "${REQUESTS:-1000}" --max-batch 8 --max-len 64 --json
  done
  for t in cuda_kernels cuda_blaslt cuda_attention; do
    [ -x "$B/$t" ] || continue
    step "memcheck-$t" compute-sanitizer --tool memcheck --error-exitcode 9 "$B/$t" --test-threads=1
    # racecheck is slow: our kernels only (RACECHECK_FILTER picks the tests).
    # (cuda_blaslt: only small_linear, our kernel among cuBLASLt's.)
    filter=${RACECHECK_FILTER:-}; [ "$t" = cuda_blaslt ] && filter=small_linear
    step "racecheck-$t" bash -c "$(declare -f racecheck_ours); o='$o'; racecheck_ours '$B/$t' $filter --test-threads=1"
  done
  grep -h '^{' "$o"/stress-*.log > "$res/check.jsonl" 2>/dev/null
  cat "$o"/compare-*.log > "$res/compare.txt" 2>/dev/null
  ;;
bench)
  nvidia-smi > "$res/nvidia-smi.txt" 2>&1
  step bench-b1 "$B/lanes" bench --device cuda --dtype float32,float16 --threads 1,16 --batch 1 --seq 128 --duration-ms 1500 --json
  step bench-big "$B/lanes" bench --device cuda --dtype float32,float16,bfloat16 --threads 1 --batch 128,512 --seq 128 --duration-ms 2000 --modes lanes --json
  LANES_CUBLASLT=off step bench-big-nolt "$B/lanes" bench --device cuda --dtype float16 --threads 1 --batch 512 --seq 128 --duration-ms 2000 --modes lanes --json
  [ -x "$B/forward_bench" ] && step forward-bench sh -c "'$B/forward_bench' --batch 512 > '$o/forward-bench.jsonl'"
  for m in fp16-b512 bf16-b512 fp16-b1-graph fp32-b512 fp32-b1; do
    step "torch-$m" sh -c "python3 scripts/gpu/torch_peer.py bench '$w/model' $m --seconds ${PEER_SECONDS:-3} >> '$o/peer.jsonl'"
  done
  grep -h '^{' "$o"/bench-*.log "$o"/forward-bench.jsonl "$o"/peer.jsonl > "$res/bench.jsonl" 2>/dev/null
  ;;
probe)
  # Where batch-1 replays serialize, and per-op figures (issue 11): launch cases
  # with and without more hardware queues, b1 scaling, per-op at b1 / b512.
  nvidia-smi > "$res/nvidia-smi.txt" 2>&1
  ls /usr/local/cuda/bin > "$o/cuda-bin.txt" 2>&1
  step launch "$B/lanes" bench launch --device cuda --threads 1,2,4,8,16,32 --graph-nodes 44 --duration-ms 400 --json
  CUDA_DEVICE_MAX_CONNECTIONS=32 step launch-conn32 "$B/lanes" bench launch --device cuda --threads 1,2,4,8,16,32 --graph-nodes 44 --duration-ms 400 --json
  step b1-f16 "$B/lanes" bench --device cuda --dtype float16 --threads 1,4,8,16,32 --batch 1 --seq 128 --duration-ms 1000 --modes lanes --json
  CUDA_DEVICE_MAX_CONNECTIONS=32 step b1-f16-conn32 "$B/lanes" bench --device cuda --dtype float16,float32 --threads 1,4,8,16,32 --batch 1 --seq 128 --duration-ms 1000 --modes lanes --json
  LANES_CUDA_SYNC=spin CUDA_DEVICE_MAX_CONNECTIONS=32 step b1-f16-spin "$B/lanes" bench --device cuda --dtype float16 --threads 8,16 --batch 1 --seq 128 --duration-ms 1000 --modes lanes --json
  step big "$B/lanes" bench --device cuda --dtype float16,float32 --threads 1,2 --batch 512,1024 --seq 128 --duration-ms 2000 --modes lanes --json
  [ -x "$B/forward_bench" ] && step fb-b1 sh -c "'$B/forward_bench' --batch 1 > '$o/fb-b1.jsonl'"
  [ -x "$B/forward_bench" ] && step fb-b512 sh -c "'$B/forward_bench' --batch 512 > '$o/fb-b512.jsonl'"
  grep -h '^{' "$o"/*.log "$o"/fb-*.jsonl > "$res/probe.jsonl" 2>/dev/null
  ;;
soak-start)
  minutes=${2:?soak-start MINUTES}
  rm -f /tmp/session-soak.json /tmp/session-soak.err
  setsid nohup bash scripts/soak.sh --device cuda --minutes "$minutes" --bin "$B/lanes" --model "$w/model" \
    --out /tmp/session-soak.json > /tmp/session-soak.stdout 2> /tmp/session-soak.err < /dev/null &
  sleep 20
  cat /tmp/session-soak.err | tee "$res/soak-start.txt"
  pgrep -f "lanes serve" > /dev/null || failed=1
  ;;
soak-wait)
  limit=${2:-560}
  for _ in $(seq 1 "$limit"); do [ -s /tmp/session-soak.json ] && break; sleep 1; done
  cp /tmp/session-soak.err "$res/soak.err" 2>/dev/null
  if [ -s /tmp/session-soak.json ]; then
    cp /tmp/session-soak.json "$res/soak.json"
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("soak pass:", d.get("pass"), "requests:", d.get("requests"), "unexpected:", d.get("unexpected_count"), "errors:", d.get("errors_count"), "rss:", {k: v for k, v in d.get("rss_mb", {}).items() if k != "series"})' "$res/soak.json"
    python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1])).get("pass") else 1)' "$res/soak.json" || failed=1
  else
    pid=$(pgrep -f "lanes serve" | head -1)
    echo "soak still running; lanes serve pid ${pid:-none}; $(grep VmRSS /proc/${pid:-0}/status 2>/dev/null)" | tee "$res/soak-progress.txt"
  fi
  ;;
unpack) ;; # only the unpacking above (for scripts/gpu-experiments.sh)
*) echo "unknown phase $phase" >&2; exit 2 ;;
esac
cat "$summary"
exit $failed
