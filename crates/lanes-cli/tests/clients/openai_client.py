"""The official `openai` SDK against `lanes serve` (run by tests/serve_clients.rs).

Usage: python openai_client.py SPEC.json  ->  one JSON object on stdout.
SPEC: {"base": "http://127.0.0.1:PORT", "model": NAME, "texts": [...],
       "ids": [[int]] (token ids of the same texts, this model's vocabulary),
       "dimensions": N}
Only prints what the server answered; the Rust test compares it with
`lanes embed` on the same texts.
"""

import base64
import json
import struct
import sys

import openai


def check(resp, n):
    assert resp.object == "list", resp.object
    assert len(resp.data) == n, (len(resp.data), n)
    for i, d in enumerate(resp.data):
        assert d.index == i, (d.index, i)
        assert d.object == "embedding", d.object
    return resp


def main():
    spec = json.load(open(sys.argv[1]))
    client = openai.OpenAI(
        base_url=spec["base"] + "/v1",
        api_key=spec.get("api_key") or "unused",
        max_retries=0,
        timeout=300,
    )
    model, texts, ids = spec["model"], spec["texts"], spec["ids"]
    out = {}

    r = check(client.embeddings.create(model=model, input=texts, encoding_format="float"), len(texts))
    out["float"] = [d.embedding for d in r.data]
    out["model"] = r.model
    out["prompt_tokens"] = r.usage.prompt_tokens
    out["total_tokens"] = r.usage.total_tokens

    # Asked explicitly, the SDK hands back the base64 string as the server sent it.
    r = check(client.embeddings.create(model=model, input=texts, encoding_format="base64"), len(texts))
    out["base64"] = []
    for d in r.data:
        raw = base64.b64decode(d.embedding)
        out["base64"].append(list(struct.unpack("<%df" % (len(raw) // 4), raw)))

    # The SDK's default: it asks for base64 and decodes it itself.
    r = check(client.embeddings.create(model=model, input=texts), len(texts))
    out["default"] = [list(map(float, d.embedding)) for d in r.data]

    r = check(client.embeddings.create(model=model, input=ids, encoding_format="float"), len(ids))
    out["ids"] = [d.embedding for d in r.data]
    out["ids_prompt_tokens"] = r.usage.prompt_tokens

    r = check(client.embeddings.create(model=model, input=ids[0], encoding_format="float"), 1)
    out["ids_one"] = r.data[0].embedding

    r = check(
        client.embeddings.create(model=model, input=texts, dimensions=spec["dimensions"], encoding_format="float"),
        len(texts),
    )
    out["dimensions"] = [d.embedding for d in r.data]

    # A refusal surfaces as the SDK's typed error with the server's status.
    try:
        client.embeddings.create(model=model, input=[])
        out["empty_status"] = 200
    except openai.APIStatusError as e:
        out["empty_status"] = e.status_code

    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
