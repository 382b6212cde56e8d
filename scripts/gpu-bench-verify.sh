#!/usr/bin/env bash
# Benchmarks and verifies a PREBUILT `lanes` binary on the GPU machine. Builds nothing.
#
#   scripts/gpu-bench-verify.sh LANES_BIN MODEL_DIR [SOURCE_DIR]
#
# LANES_BIN   the release binary built from SOURCE_DIR (cargo build --release -p lanes-cli)
# MODEL_DIR   the all-MiniLM-L6-v2 folder (model.safetensors, tokenizer.json, config.json)
# SOURCE_DIR  the source tree the binary was built from (default: the current folder);
#             `lanes verify` refuses (exit 3) if the binary's embedded hash differs.
#
# Writes everything under $OUT (default ./gpu-bench-verify-out):
#   version.txt, nvidia-smi.txt, bench.jsonl + bench.txt + bench.png (lanes vs global-lock,
#   threads 1,2,4,8,16 x batch 1,8,32,128,512 x dtype, 128 tokens), bench-alloc.jsonl, stress.json,
#   stress-inject.json, verify.txt + lanes-verify.jsonl (ledger) + verify-status.txt,
#   summary.txt (each step's exit code). Exits non-zero if any step failed.
# Knobs: DEVICE (cuda), DURATION_MS per bench cell (1500), THREADS (1,2,4,8,16),
#   BATCH (1,8,32,128,512), DTYPE (float32,float16,bfloat16), SEQ (128),
#   VERIFY_THREADS (4,8,16,32), VERIFY_REQUESTS (16).
set -uo pipefail

if [ $# -lt 2 ]; then
  sed -n '2,20p' "$0" >&2
  exit 2
fi
bin=$1
model=$2
src=${3:-$PWD}
out=${OUT:-$PWD/gpu-bench-verify-out}
device=${DEVICE:-cuda}
duration=${DURATION_MS:-1500}
threads=${THREADS:-1,2,4,8,16}
batch=${BATCH:-1,8,32,128,512}
dtype=${DTYPE:-float32,float16,bfloat16}
seq=${SEQ:-128}
verify_threads=${VERIFY_THREADS:-4,8,16,32}
verify_requests=${VERIFY_REQUESTS:-16}

[ -x "$bin" ] || { echo "not an executable: $bin" >&2; exit 2; }
[ -f "$model/model.safetensors" ] || { echo "no model.safetensors in $model" >&2; exit 2; }
[ -d "$src/crates" ] || { echo "no crates/ in $src: pass the source tree the binary was built from" >&2; exit 2; }
mkdir -p "$out"
summary="$out/summary.txt"
: > "$summary"
failed=0

# step NAME CMD...: runs CMD (its stdout is the step's), records its exit code in the
# summary, never stops the script.
step() {
  local name=$1
  shift
  local start=$SECONDS
  echo "== $name: $*" >&2
  "$@"
  local rc=$?
  echo "$name rc=$rc seconds=$((SECONDS - start))" >> "$summary"
  [ "$rc" -eq 0 ] || failed=1
  return 0
}

step version "$bin" version --verbose > "$out/version.txt"
if command -v nvidia-smi >/dev/null; then nvidia-smi > "$out/nvidia-smi.txt" 2>&1; fi

step bench "$bin" bench --device "$device" --model "$model" --threads "$threads" --batch "$batch" \
  --seq "$seq" --dtype "$dtype" --modes lanes,global-lock --duration-ms "$duration" --json \
  --plot "$out/bench.png" \
  > "$out/bench.jsonl"
# The same cells as a table, for people (from the JSON lines; no second run).
if command -v python3 >/dev/null; then
  python3 - "$out/bench.jsonl" > "$out/bench.txt" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{'mode':<12} {'dtype':<9} {'threads':>7} {'batch':>5} {'seq':>4} {'seq/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'eff':>5}")
for r in rows:
    eff = "-" if r["efficiency"] is None else f"{r['efficiency']:.2f}"
    print(f"{r['mode']:<12} {r.get('dtype', 'float32'):<9} {r['threads']:>7} {r['batch']:>5} {r['seq']:>4} "
          f"{r['seq_per_s']:>11.1f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {eff:>5}")
by = {(r["mode"], r.get("dtype", "float32"), r["threads"], r["batch"]): r["seq_per_s"] for r in rows}
print()
for (mode, d, t, b), v in sorted(by.items()):
    g = by.get(("global-lock", d, t, b))
    if mode == "lanes" and g:
        print(f"lanes / global-lock, {d}, {t} threads, batch {b}: {v / g:.2f}x")
PY
fi

step bench-alloc "$bin" bench alloc --device "$device" --threads "$threads" --json > "$out/bench-alloc.jsonl"

step stress "$bin" stress --device "$device" --model "$model" --threads 16 --requests 32 --json \
  > "$out/stress.json"
step stress-inject "$bin" stress --device "$device" --model "$model" --threads 16 --requests 16 \
  --inject oom:0.015 --json > "$out/stress-inject.json"

step verify "$bin" verify --device "$device" --model "$model" --source "$src" \
  --ledger "$out/lanes-verify.jsonl" --threads "$verify_threads" --requests "$verify_requests" \
  > "$out/verify.txt" 2>&1
step verify-status "$bin" verify --status --source "$src" --ledger "$out/lanes-verify.jsonl" \
  > "$out/verify-status.txt" 2>&1

cat "$summary" >&2
exit "$failed"
