#!/usr/bin/env python3
"""PyTorch peer of lanes on the GPU machine: the same MiniLM forward (BERT + mean pooling
+ L2 normalize) with torch + transformers, built from the local model folder (no network).

usage:
  torch_peer.py bench MODEL_DIR MODE [--tokens 128] [--seconds 3]
      MODE: fp16-b512 | bf16-b512 | fp16-b1-graph | fp32-b512-compile | fp32-b512 | fp32-b1
      prints one JSON line: {"peer": "torch", "mode", "dtype", "batch", "tokens", "seq_per_s", ...}
  torch_peer.py embed MODEL_DIR FIXTURE_JSONL OUT_JSONL --dtype float32|float16|bfloat16
      torch's embeddings of the fixture texts (token ids from the fixture, so the
      tokenizer is not part of the check), one JSON line per text; prints a summary
      line with the cosine / max |diff| of these embeddings against the fixture's.

Inputs of the benchmark: random token ids (a fixed seed) in [1000, 2000), every sequence
exactly --tokens long, attention mask all ones, token types 0. TF32 is off for fp32.
"""
import json
import sys
import time

import torch
from transformers import BertConfig, BertModel

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODES = {
    # mode: (dtype, batch, how)
    "fp16-b512": ("float16", 512, "eager"),
    "bf16-b512": ("bfloat16", 512, "eager"),
    "fp16-b1-graph": ("float16", 1, "graph"),
    "fp32-b512-compile": ("float32", 512, "compile"),
    "fp32-b512": ("float32", 512, "eager"),
    "fp32-b1": ("float32", 1, "eager"),
}


def load(model_dir, dtype, device="cuda"):
    """BertModel from MODEL_DIR/config.json + model.safetensors (strict apart from the pooler)."""
    from safetensors.torch import load_file

    cfg = BertConfig.from_json_file(f"{model_dir}/config.json")
    try:
        model = BertModel(cfg, add_pooling_layer=False, attn_implementation="sdpa")
    except TypeError:
        model = BertModel(cfg, add_pooling_layer=False)
    state = load_file(f"{model_dir}/model.safetensors")
    state = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in state.items()}
    state = {k: v for k, v in state.items()
             if not k.startswith("pooler.") and not k.endswith("position_ids")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise SystemExit(f"{model_dir}/model.safetensors: missing {missing}, unexpected {unexpected}")
    return model.to(device=device, dtype=DTYPES[dtype]).eval()


def embed_fn(model):
    def run(ids, mask, types):
        h = model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1).float() / m.sum(1).float().clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1)

    return run


def bench(model_dir, mode, tokens, seconds):
    dtype, batch, how = MODES[mode]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = load(model_dir, dtype)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(1000, 2000, (batch, tokens), generator=g).cuda()
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    fn = embed_fn(model)
    note = ""
    if how == "compile":
        try:
            fn = torch.compile(fn)
            with torch.no_grad():
                fn(ids, mask, types)
            torch.cuda.synchronize()
        except Exception as e:  # no compiler toolchain offline, etc.
            note = f"torch.compile failed ({type(e).__name__}: {str(e)[:200]}); eager instead"
            how = "eager(compile failed)"
            fn = embed_fn(model)
    with torch.no_grad():
        for _ in range(3):
            fn(ids, mask, types)
        torch.cuda.synchronize()
        if how == "graph":
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    fn(ids, mask, types)
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = fn(ids, mask, types)
            step = graph.replay
        else:
            def step():
                return fn(ids, mask, types)
        # Calibrate: iterations for ~`seconds`.
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        one = max(time.perf_counter() - t0, 1e-6)
        iters = max(3, min(100_000, int(seconds / one)))
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        torch.cuda.synchronize()
        took = time.perf_counter() - t0
    rec = {
        "peer": "torch", "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0),
        "mode": mode, "dtype": dtype, "batch": batch, "tokens": tokens, "how": how,
        "iters": iters, "seconds": round(took, 4),
        "seq_per_s": round(iters * batch / took, 1),
        "ms_per_forward": round(took / iters * 1e3, 4),
    }
    if note:
        rec["note"] = note
    print(json.dumps(rec), flush=True)


def embed(model_dir, fixture, out_path, dtype):
    model = load(model_dir, dtype)
    fn = embed_fn(model)
    rows = [json.loads(l) for l in open(fixture) if l.strip()]
    worst_cos, worst_diff = 1.0, 0.0
    with torch.no_grad(), open(out_path, "w") as out:
        for r in rows:
            ids = torch.tensor([r["input_ids"]], device="cuda")
            e = fn(ids, torch.ones_like(ids), torch.zeros_like(ids))[0].cpu().double()
            ref = torch.tensor(r["embedding"], dtype=torch.float64)
            cos = float(torch.dot(e, ref) / (e.norm() * ref.norm()))
            worst_cos = min(worst_cos, cos)
            worst_diff = max(worst_diff, float((e - ref).abs().max()))
            out.write(json.dumps({"text": r["text"], "dtype": dtype,
                                  "embedding": [float(x) for x in e]}) + "\n")
    print(json.dumps({"peer": "torch", "embed": dtype, "texts": len(rows),
                      "min_cosine_vs_fixture": worst_cos, "max_abs_diff_vs_fixture": worst_diff}),
          flush=True)


def main(argv):
    if len(argv) < 3:
        raise SystemExit(__doc__)
    if argv[0] == "bench":
        tokens, seconds = 128, 3.0
        rest = argv[3:]
        for i in range(0, len(rest) - 1, 2):
            if rest[i] == "--tokens":
                tokens = int(rest[i + 1])
            elif rest[i] == "--seconds":
                seconds = float(rest[i + 1])
            else:
                raise SystemExit(f"unknown option {rest[i]}")
        if argv[2] not in MODES:
            raise SystemExit(f"unknown mode {argv[2]}: one of {', '.join(MODES)}")
        bench(argv[1], argv[2], tokens, seconds)
    elif argv[0] == "embed":
        if len(argv) != 6 or argv[4] != "--dtype" or argv[5] not in DTYPES:
            raise SystemExit(__doc__)
        embed(argv[1], argv[2], argv[3], argv[5])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
