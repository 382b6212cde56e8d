"""`langchain_openai.OpenAIEmbeddings` against `lanes serve` (run by
tests/serve_clients.rs), with its default chunking (1000 texts a request).

Why check_embedding_ctx_length=False: with the default True, langchain
tokenizes every text with tiktoken (cl100k_base, downloaded from the internet
on first use: CI has PyPI only) and sends the *tiktoken* token ids. Those ids
belong to OpenAI's vocabulary, not to this model's WordPiece vocabulary, so a
server for all-MiniLM-L6-v2 cannot embed them meaningfully. With False,
langchain sends the texts themselves.

Usage: python langchain_client.py SPEC.json  ->  one JSON object on stdout.
SPEC: {"base": URL, "model": NAME, "texts": [... 1000+ ...], "query": TEXT}
"""

import json
import sys

from langchain_openai import OpenAIEmbeddings


def main():
    spec = json.load(open(sys.argv[1]))
    emb = OpenAIEmbeddings(
        model=spec["model"],
        base_url=spec["base"] + "/v1",
        api_key=spec.get("api_key") or "unused",
        check_embedding_ctx_length=False,
        max_retries=0,
        request_timeout=300,
    )
    out = {
        "chunk_size": emb.chunk_size,
        "documents": emb.embed_documents(spec["texts"]),
        "query": emb.embed_query(spec["query"]),
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
