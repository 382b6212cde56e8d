#!/usr/bin/env bash
# Knob sweeps on the device (issue 11), over the build staged by
# `scripts/gpu-session.sh stage` (run `scripts/gpu-session.sh probe` or any phase
# first, or this unpacks the binaries itself). Builds nothing. Each line of
# $OUT/experiments.jsonl is a bench cell with the knobs it ran under ("env").
#   LANES_GEMM_SMS    cuBLASLt SM_COUNT_TARGET for 16-bit linears of <= 1024 rows
#   LANES_TN_BLOCKS   linear_tn's split-K block target (f32 small batches)
#   LANES_ATTN_F32    flash|kernels: force the f32 attention kernel
#   LANES_F32_LT      off: f32 linears on linear_tn / cuBLAS instead of cuBLASLt
#   LANES_LT_TUNE     off: cuBLASLt's heuristic pick, no timing of candidates
#   LANES_F32_SMALL   off|few|always: f32 linears of <= 256 rows on small_linear
# Usage: gpu-experiments.sh [knobs|tune]   (the sweep; knobs by default)
set -uo pipefail
sweep=${1:-knobs}
cd "$(dirname "$0")/.."
[ -f /tmp/session-work/ready ] || bash scripts/gpu-session.sh unpack > /dev/null 2>&1
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
B=/tmp/session-work/bin
export LANES_MODEL=/tmp/session-work/model
res=${OUT:-/tmp/experiments}; mkdir -p "$res"
out=$res/experiments.jsonl; : > "$out"
cell() { # cell "ENV=V ..." lanes-bench-args...
  local envs=$1; shift
  env $envs "$B/lanes" bench --device cuda --seq 128 --modes lanes --json "$@" 2>> "$res/experiments.err" \
    | grep '^{' | python3 -c 'import json,sys
for l in sys.stdin:
    d=json.loads(l); d["env"]=sys.argv[1]; print(json.dumps(d))' "$envs" >> "$out"
}
case "$sweep" in
knobs)
# Defaults: a forward plans its small GEMMs narrower as more run beside it
# (encoder.rs: wide alone, 16 SMs among a few, 8 in a crowd).
cell "" --dtype float16 --threads 1,2,4,8,16,32 --batch 1 --duration-ms 1000
cell "" --dtype bfloat16 --threads 1,16 --batch 1 --duration-ms 1000
cell "LANES_GEMM_SMS=0" --dtype float16 --threads 16,32 --batch 1 --duration-ms 1000
cell "" --dtype float16 --threads 16 --batch 8 --duration-ms 1000
cell "" --dtype float32 --threads 1,2,4,8,16,32 --batch 1 --duration-ms 1000
cell "LANES_F32_LT=off" --dtype float32 --threads 16 --batch 1 --duration-ms 1000
cell "LANES_F32_LT=off" --dtype float32 --threads 1 --batch 512 --duration-ms 2000
cell "LANES_ATTN_F32=kernels" --dtype float32 --threads 1 --batch 512 --duration-ms 2000
cell "LANES_ATTN_F32=flash" --dtype float32 --threads 16 --batch 1 --duration-ms 1000
cell "" --dtype float16,bfloat16 --threads 2 --batch 512 --duration-ms 2000
;;
tune)
# Timed cuBLASLt algorithms (lt_tune.rs) against the heuristic's pick, each
# goal cell of issue 11, default and off interleaved (noise shows as their spread).
for round in 1 2; do
  cell "" --dtype float32 --threads 1 --batch 1 --duration-ms 1500
  cell "LANES_LT_TUNE=off" --dtype float32 --threads 1 --batch 1 --duration-ms 1500
  cell "LANES_F32_SMALL=off" --dtype float32 --threads 1 --batch 1 --duration-ms 1500
done
cell "" --dtype float32 --threads 1,2,4 --batch 1,8 --duration-ms 1000
cell "LANES_F32_SMALL=off" --dtype float32 --threads 1,2,4 --batch 1,8 --duration-ms 1000
cell "LANES_F32_SMALL=always" --dtype float32 --threads 16 --batch 1 --duration-ms 1500
cell "" --dtype float32,float16 --threads 16 --batch 1 --duration-ms 1500
cell "LANES_LT_TUNE=off" --dtype float32,float16 --threads 16 --batch 1 --duration-ms 1500
cell "" --dtype float32,float16,bfloat16 --threads 1 --batch 512 --duration-ms 2000
cell "LANES_LT_TUNE=off" --dtype float32,float16,bfloat16 --threads 1 --batch 512 --duration-ms 2000
cell "" --dtype float16 --threads 1 --batch 1 --duration-ms 1500
cell "LANES_LT_TUNE=off" --dtype float16 --threads 1 --batch 1 --duration-ms 1500
;;
*) echo "unknown sweep $sweep (knobs|tune)" >&2; exit 2 ;;
esac
"$B/forward_bench" --only f32 --batch 1 > "$res/fb.txt" 2>&1
python3 - "$out" <<'PY'
import json, sys
for l in open(sys.argv[1]):
    d = json.loads(l)
    print(f"{d['env'] or 'default':22} {d['dtype']:9} t={d['threads']:<3} b={d['batch']:<4} {d['seq_per_s']:10.0f} seq/s  p50 {d['p50_ms']:.3f} ms")
PY
