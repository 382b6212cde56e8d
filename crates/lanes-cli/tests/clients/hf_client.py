"""`huggingface_hub.InferenceClient(base_url=...)` against `lanes serve` (run
by tests/serve_clients.rs). `feature_extraction` posts TEI's body to the base
URL itself, i.e. `POST /`.

Usage: python hf_client.py SPEC.json  ->  one JSON object on stdout.
SPEC: {"base": URL, "texts": [...], "long": TEXT over 256 tokens,
       "prompt_name": NAME}
"""

import json
import sys

from huggingface_hub import InferenceClient


def rows(arr):
    arr = arr.tolist()
    return arr if arr and isinstance(arr[0], list) else [arr]


def main():
    spec = json.load(open(sys.argv[1]))
    client = InferenceClient(base_url=spec["base"], api_key=spec.get("api_key"), timeout=300)
    texts = spec["texts"]
    out = {}
    out["batch"] = rows(client.feature_extraction(texts))
    out["single"] = [rows(client.feature_extraction(t))[0] for t in texts[:3]]
    out["raw"] = rows(client.feature_extraction(texts, normalize=False))
    out["prompt"] = rows(client.feature_extraction(texts, prompt_name=spec["prompt_name"]))
    out["long_right"] = rows(client.feature_extraction(spec["long"], truncate=True, truncation_direction="right"))[0]
    out["long_left"] = rows(client.feature_extraction(spec["long"], truncate=True, truncation_direction="left"))[0]
    try:
        client.feature_extraction(spec["long"], truncate=False)
        out["long_refused_status"] = 200
    except Exception as e:  # HfHubHTTPError carries the response
        resp = getattr(e, "response", None)
        out["long_refused_status"] = getattr(resp, "status_code", None)
        out["long_refused_error"] = str(e)[:500]
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
