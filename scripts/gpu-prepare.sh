#!/usr/bin/env bash
# Runs HERE (no GPU needed): builds the release binary and every test binary that the
# GPU suite runs, and stages them with an F16 copy of the model, the fixture and the
# GPU scripts under .carry/ (git-ignored) for `device run --carry .carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-model.sh
rm -rf .carry && mkdir -p .carry/bin .carry/model .carry/fixtures
cargo build --release -p lanes-cli
cp target/release/lanes .carry/bin/
# Test binaries: cargo prints their paths as JSON.
cargo test --release -p lanes -p lanes-nn --no-run --message-format=json 2>/dev/null \
  | python3 -c '
import json, sys, shutil, os
want = {"every_device", "cuda_backend", "runtime_faults", "cuda_encoder", "encoder_cpu"}
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in want:
        shutil.copy(m["executable"], os.path.join(".carry/bin", m["target"]["name"]))
        print("staged", m["target"]["name"])
'
cp crates/lanes-nn/tests/fixtures/minilm_reference.jsonl .carry/fixtures/
# F32 weights, exact for the fixture texts: unused word-embedding rows zeroed, gzipped
# (87 MB -> ~41 MB). The GPU suite gunzips it.
python3 scripts/gpu/prune_vocab.py models/all-MiniLM-L6-v2/model.safetensors \
  .carry/model/model.safetensors .carry/fixtures/minilm_reference.jsonl
gzip -f .carry/model/model.safetensors
cp models/all-MiniLM-L6-v2/{tokenizer.json,config.json} .carry/model/
cp scripts/gpu/*.py .carry/
strip --strip-debug .carry/bin/* 2>/dev/null || true
gzip -f .carry/bin/*
du -sh .carry; du -sh .carry/*
