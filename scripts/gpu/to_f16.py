#!/usr/bin/env python3
"""Write an F16 copy of a safetensors file (F32 tensors become F16; others kept),
so the model fits the GPU machine's 64 MiB carry. No numpy needed.
usage: to_f16.py IN.safetensors OUT.safetensors"""
import json
import struct
import sys

src, dst = sys.argv[1], sys.argv[2]
with open(src, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    base = 8 + n
    out_header, chunks, offset = {}, [], 0
    for name, info in sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                             key=lambda kv: kv[1]["data_offsets"][0]):
        start, end = info["data_offsets"]
        f.seek(base + start)
        raw = f.read(end - start)
        dtype = info["dtype"]
        if dtype == "F32":
            count = len(raw) // 4
            raw = struct.pack(f"<{count}e", *struct.unpack(f"<{count}f", raw))
            dtype = "F16"
        out_header[name] = {"dtype": dtype, "shape": info["shape"], "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
if "__metadata__" in header:
    out_header["__metadata__"] = header["__metadata__"]
hjson = json.dumps(out_header, separators=(",", ":")).encode()
hjson += b" " * ((8 - len(hjson) % 8) % 8)
with open(dst, "wb") as o:
    o.write(struct.pack("<Q", len(hjson)))
    o.write(hjson)
    for c in chunks:
        o.write(c)
print(f"wrote {dst}")
