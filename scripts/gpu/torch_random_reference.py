#!/usr/bin/env python3
"""Build a MiniLM-shaped BERT with random weights, save it as a lanes model folder,
and write torch's embeddings for a set of texts (the reference `lanes embed` must
match). Runs on the GPU machine (torch + transformers there; no network needed).

usage: torch_random_reference.py TOKENIZER_DIR OUT_DIR TEXTS_JSONL OUT_JSONL [--device cuda]
"""
import json
import shutil
import sys

import torch
from transformers import BertConfig, BertModel
from safetensors.torch import save_file

tok_dir, out_dir, texts_path, out_path = sys.argv[1:5]
device = sys.argv[6] if len(sys.argv) > 6 and sys.argv[5] == "--device" else (
    "cuda" if torch.cuda.is_available() else "cpu")
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.manual_seed(1234)

cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                 intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2,
                 layer_norm_eps=1e-12, hidden_act="gelu")
model = BertModel(cfg, add_pooling_layer=False).eval()
# Random but not degenerate: perturb every parameter so no weight is the init default.
with torch.no_grad():
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.02)

import os
os.makedirs(out_dir, exist_ok=True)
state = {k: v.contiguous() for k, v in model.state_dict().items() if "position_ids" not in k}
save_file(state, os.path.join(out_dir, "model.safetensors"))
cfg_json = cfg.to_dict()
cfg_json["architectures"] = ["BertModel"]
with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(cfg_json, f)
shutil.copy(os.path.join(tok_dir, "tokenizer.json"), os.path.join(out_dir, "tokenizer.json"))

# Token ids come from the lanes tokenizer run (ids in the texts file) so the check
# isolates the forward pass.
rows = [json.loads(l) for l in open(texts_path) if l.strip()]
model = model.to(device)
with torch.no_grad(), open(out_path, "w") as out:
    for r in rows:
        ids = torch.tensor([r["input_ids"]], device=device)
        mask = torch.ones_like(ids)
        h = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
        m = mask.unsqueeze(-1).float()
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        emb = torch.nn.functional.normalize(pooled, p=2, dim=1)[0]
        out.write(json.dumps({"text": r["text"], "input_ids": r["input_ids"],
                              "embedding": [float(x) for x in emb.cpu()]}) + "\n")
print(f"torch reference: {len(rows)} texts on {device}, weights in {out_dir}")
