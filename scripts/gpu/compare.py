#!/usr/bin/env python3
"""Compare `lanes embed` JSONL output with a reference JSONL (same order).
usage: compare.py LANES_JSONL REFERENCE_JSONL MIN_COSINE MAX_ABS_DIFF LABEL
Prints one summary line; exits 1 if any row is outside the bounds."""
import json
import math
import sys

got = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ref = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
min_cos, max_diff, label = float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
assert len(got) == len(ref), f"{label}: {len(got)} rows vs {len(ref)}"
worst_cos, worst_diff, bad = 1.0, 0.0, []
for i, (g, r) in enumerate(zip(got, ref)):
    a, b = g["embedding"], r["embedding"]
    dot = sum(x * y for x, y in zip(a, b))
    cos = dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)) or 1.0)
    diff = max(abs(x - y) for x, y in zip(a, b))
    if "input_ids" in r and g.get("tokens") not in (None, len(r["input_ids"])):
        bad.append(f"row {i}: {g['tokens']} tokens vs {len(r['input_ids'])}")
    worst_cos, worst_diff = min(worst_cos, cos), max(worst_diff, diff)
    if cos < min_cos or diff > max_diff:
        bad.append(f"row {i}: cosine {cos:.8f} max|diff| {diff:.3e}")
status = "PASS" if not bad else "FAIL"
print(f"{label}: {status} rows={len(got)} min_cosine={worst_cos:.9f} max_abs_diff={worst_diff:.3e} "
      f"(bounds cos>={min_cos} diff<={max_diff})")
for b in bad[:5]:
    print("  " + b)
sys.exit(0 if not bad else 1)
