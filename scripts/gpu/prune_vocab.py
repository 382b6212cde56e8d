#!/usr/bin/env python3
"""Copy a BERT safetensors file with every word-embedding row zeroed except the
token ids some texts use (plus the special tokens), so the F32 weights compress to
fit the GPU machine's 64 MiB carry while staying exact for those texts.
usage: prune_vocab.py IN.safetensors OUT.safetensors IDS_JSONL [IDS_JSONL ...]
(each IDS_JSONL line has an `input_ids` array)."""
import json
import struct
import sys

src, dst, id_files = sys.argv[1], sys.argv[2], sys.argv[3:]
keep = {0, 100, 101, 102, 103}  # [PAD] [UNK] [CLS] [SEP] [MASK]
for path in id_files:
    for line in open(path):
        if line.strip():
            keep.update(json.loads(line)["input_ids"])
blob = open(src, "rb").read()
n = struct.unpack("<Q", blob[:8])[0]
header = json.loads(blob[8:8 + n])
data = bytearray(blob[8 + n:])
name = next(k for k in header if k.endswith("word_embeddings.weight"))
info = header[name]
assert info["dtype"] == "F32", f"{name} is {info['dtype']}, expected F32"
rows, dim = info["shape"]
start = info["data_offsets"][0]
zero = bytes(dim * 4)
for r in range(rows):
    if r not in keep:
        o = start + r * dim * 4
        data[o:o + dim * 4] = zero
open(dst, "wb").write(blob[:8 + n] + bytes(data))
print(f"{name}: kept {len(keep & set(range(rows)))} of {rows} rows -> {dst}")
