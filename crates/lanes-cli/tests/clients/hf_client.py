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

    def call(name, fn):
        """out[name] = fn(), or out[name + "_error"] = {status, message}."""
        try:
            out[name] = fn()
        except Exception as e:  # HfHubHTTPError carries the response
            resp = getattr(e, "response", None)
            out[name + "_error"] = {"status": getattr(resp, "status_code", None), "message": str(e)[:500]}

    long = spec["long"]
    call("batch", lambda: rows(client.feature_extraction(texts)))
    call("single", lambda: [rows(client.feature_extraction(t))[0] for t in texts[:3]])
    call("prompt", lambda: rows(client.feature_extraction(texts, prompt_name=spec["prompt_name"])))
    call("long_right", lambda: rows(client.feature_extraction(long, truncate=True, truncation_direction="right"))[0])
    call("long_left", lambda: rows(client.feature_extraction(long, truncate=True, truncation_direction="left"))[0])
    call("long_refused", lambda: rows(client.feature_extraction(long, truncate=False)))
    call("raw", lambda: rows(client.feature_extraction(texts, normalize=False)))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
