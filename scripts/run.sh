#!/usr/bin/env bash
# The main job: fetch the model if missing, build, and embed a sample from many
# threads on the best available device (CUDA if present, else CPU).
#
# Self-contained: the sample comes from the fixture inside this repository
# (crates/lanes-nn/tests/fixtures/minilm_reference.jsonl). Every run keeps what
# it wrote in its own folder, target/lanes-run/<UTC time>/ (or $RUN_DIR), and
# prints where that is; nothing is deleted.
#
# The build is the one scripts/test.sh makes (same command, profile, features and
# target dir), so running one after the other builds nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-model.sh
cargo test --workspace --release --no-run
target="${CARGO_TARGET_DIR:-target}"
lanes="$target/release/lanes"
threads="${THREADS:-8}"
run_dir="${RUN_DIR:-$target/lanes-run/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$run_dir"
sample="$run_dir/sample.jsonl"
out="$run_dir/embeddings.jsonl"
python3 - crates/lanes-nn/tests/fixtures/minilm_reference.jsonl "$sample" "${SAMPLES:-512}" <<'PY'
import json, sys
fixture, dest, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
texts = [json.loads(l)["text"] for l in open(fixture, encoding="utf-8") if l.strip()]
with open(dest, "w", encoding="utf-8") as f:
    for i in range(n):
        f.write(json.dumps(texts[i % len(texts)] + f" (sample {i})") + "\n")
PY
"$lanes" embed --device auto --threads "$threads" --batch 32 --format jsonl \
  --input "$sample" --output "$out" 2> >(tee "$run_dir/embed.log" >&2)
echo "wrote $(wc -l < "$out") embeddings (JSONL) to $out"
echo "run folder (kept): $run_dir"
