#!/usr/bin/env bash
# Creates (or reuses) the Python venv with the real HTTP clients the serve tests
# drive: openai, huggingface_hub and langchain-openai, pinned in
# crates/lanes-cli/tests/clients/requirements.txt, from PyPI only.
#
#   scripts/python-env.sh            # prints the venv's python on stdout
#   LANES_PY_VENV=DIR scripts/python-env.sh
#
# The venv lives in target/py-clients (ignored with the rest of target/) and is
# rebuilt when requirements.txt changes. Nothing here reaches the Hugging Face
# hub or tiktoken's download site: the tests run langchain-openai with
# check_embedding_ctx_length=False (see tests/clients/langchain_client.py).
set -euo pipefail
cd "$(dirname "$0")/.."
req=crates/lanes-cli/tests/clients/requirements.txt
venv=${LANES_PY_VENV:-target/py-clients}
py=${PYTHON:-python3}
command -v "$py" >/dev/null || { echo "python-env: $py not found" >&2; exit 1; }
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "python-env: creating $venv from $req" >&2
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
  "$venv/bin/python" -c "import openai, huggingface_hub, langchain_openai, numpy" >&2
  echo "$want" >"$stamp"
fi
echo "$(cd "$venv" && pwd)/bin/python"
