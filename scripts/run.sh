#!/usr/bin/env bash
# The main job: fetch the model if missing, build, and embed a sample from many
# threads on the best available device (CUDA if present, else CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-model.sh
cargo build --release -p lanes-cli
threads="${THREADS:-8}"
sample="$(mktemp)"; out="$(mktemp)"
trap 'rm -f "$sample" "$out"' EXIT
python3 - "$sample" "${SAMPLES:-512}" <<'PY'
import json, sys
texts = [json.loads(l)["text"] for l in open("../shared/fixtures/minilm_reference.jsonl")] \
    if __import__("os").path.exists("../shared/fixtures/minilm_reference.jsonl") else []
base = texts or ["lanes gives every serving thread its own lane."]
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2]) if len(sys.argv) > 2 else 512):
        f.write(json.dumps(base[i % len(base)] + f" (sample {i})") + "\n")
PY
./target/release/lanes embed --device auto --threads "$threads" --batch 32 --format jsonl \
  --input "$sample" --output "$out"
echo "wrote $(wc -l < "$out") embeddings (JSONL)"
