#!/usr/bin/env bash
# End-to-end browser test of `ftri serve`: starts the server on a free port, drives headless
# Chromium through the overview, a neuron page, search and localize, saves screenshots, stops
# the server. Builds nothing.
#
#   tests/browser/run.sh FTRI_BIN [ATLAS [MODEL]]
#
# Without ATLAS it makes a small one with FTRI_BIN (`plant` a 2-layer GPT-2 whose neuron 1.5
# fires on dog/puppy, `record` a filler-word corpus) and serves it with that model, so the model
# features (prompt, lesion, localize, describe) are exercised too; it then also records the tiny
# Mixtral fixture on the same corpus and drives the expert map and an expert page (experts.mjs)
# against a second server, and records the planted model's heads (`blocks.*.attn.hook_z`) to
# drive the patching page (with per-head cells) and a head's attention pattern (patch.mjs)
# against a third.
# Needs: node + npm (playwright-core is installed here from package-lock.json if missing) and
# Chromium at /usr/bin/chromium (Debian: apt-get install -y chromium; override with CHROMIUM=).
# Screenshots: $FTRI_ARTIFACTS or target/browser-artifacts/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${1:-${FTRI_BIN:-}}"
atlas="${2:-${FTRI_ATLAS:-}}"
model="${3:-${FTRI_MODEL:-}}"
art="${FTRI_ARTIFACTS:-$root/target/browser-artifacts}"
chromium="${CHROMIUM:-/usr/bin/chromium}"

die() { echo "tests/browser/run.sh: $*" >&2; exit 2; }
[ -n "$bin" ] || die "usage: tests/browser/run.sh FTRI_BIN [ATLAS [MODEL]]"
[ -x "$bin" ] || die "$bin is not an executable (build it first: cargo build --release)"
[ -x "$chromium" ] || die "no Chromium at $chromium (apt-get install -y chromium)"
command -v node >/dev/null || die "node is not installed"
if [ ! -d "$here/node_modules/playwright-core" ]; then
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed"
fi

work="$(mktemp -d)"
pid=""
pid_moe=""
pid_heads=""
cleanup() {
  for p in $pid $pid_moe $pid_heads; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

if [ -z "$atlas" ]; then
  echo "making a test atlas in $work"
  "$bin" plant --arch gpt2 --layers 2 --d-model 64 --heads 4 --d-mlp 256 --vocab 300 \
    --neuron 1.5:dog,puppy:bark --out "$work/model" >/dev/null
  for i in $(seq 1 60); do
    line=""
    for j in $(seq 1 $((8 + (i * 7) % 17))); do
      k=$(( (i * 31 + j * 17) % 13 ))
      if [ "$k" -eq 0 ]; then w=dog; elif [ "$k" -eq 1 ]; then w=puppy; else w="w$(( (i * 13 + j * 29) % 250 + 1 ))"; fi
      line="$line $w"
    done
    echo "${line# }"
  done > "$work/corpus.txt"
  "$bin" record --model "$work/model" --corpus "$work/corpus.txt" --out "$work/atlas" --top-k 8 >/dev/null 2>&1
  atlas="$work/atlas"
  model="${model:-$work/model}"
  export FTRI_PLANTED="1.5:dog:bark"
fi

log="$work/serve.log"
args=(serve --atlas "$atlas" --host 127.0.0.1 --port 0)
[ -n "$model" ] && args+=(--model "$model")
"$bin" "${args[@]}" 2>"$log" &
pid=$!
url=""
for _ in $(seq 1 600); do
  url="$(grep -o 'http://127\.0\.0\.1:[0-9]*/' "$log" | head -n1 || true)"
  [ -n "$url" ] && break
  if ! kill -0 "$pid" 2>/dev/null; then cat "$log" >&2; die "the server exited"; fi
  sleep 0.1
done
[ -n "$url" ] || { cat "$log" >&2; die "the server did not start"; }
echo "server at $url (pid $pid)"
mkdir -p "$art"
status=0
FTRI_URL="$url" CHROMIUM="$chromium" node "$here/e2e.mjs" "$art" || status=$?

# The experts of a mixture-of-experts atlas (only when this script made the atlas above).
if [ -n "${FTRI_PLANTED:-}" ]; then
  "$bin" record --model "$root/tests/fixtures/mixtral" --corpus "$work/corpus.txt" \
    --out "$work/moe-atlas" --top-k 8 >/dev/null 2>&1 || die "recording the Mixtral fixture failed"
  "$bin" serve --atlas "$work/moe-atlas" --host 127.0.0.1 --port 0 2>"$work/serve-moe.log" &
  pid_moe=$!
  url_moe=""
  for _ in $(seq 1 600); do
    url_moe="$(grep -o 'http://127\.0\.0\.1:[0-9]*/' "$work/serve-moe.log" | head -n1 || true)"
    [ -n "$url_moe" ] && break
    kill -0 "$pid_moe" 2>/dev/null || { cat "$work/serve-moe.log" >&2; die "the MoE server exited"; }
    sleep 0.1
  done
  [ -n "$url_moe" ] || die "the MoE server did not start"
  echo "MoE server at $url_moe (pid $pid_moe)"
  FTRI_URL="$url_moe" CHROMIUM="$chromium" node "$here/experts.mjs" "$art" || status=$?

  # Heads: an atlas of the planted model's hook_z (one unit per head), served with the model.
  "$bin" record --model "$work/model" --corpus "$work/corpus.txt" --out "$work/head-atlas" \
    --sites 'blocks.*.attn.hook_z' --top-k 8 >/dev/null 2>&1 || die "recording the heads failed"
  "$bin" serve --atlas "$work/head-atlas" --model "$work/model" --host 127.0.0.1 --port 0 \
    2>"$work/serve-heads.log" &
  pid_heads=$!
  url_heads=""
  for _ in $(seq 1 600); do
    url_heads="$(grep -o 'http://127\.0\.0\.1:[0-9]*/' "$work/serve-heads.log" | head -n1 || true)"
    [ -n "$url_heads" ] && break
    kill -0 "$pid_heads" 2>/dev/null || { cat "$work/serve-heads.log" >&2; die "the heads server exited"; }
    sleep 0.1
  done
  [ -n "$url_heads" ] || die "the heads server did not start"
  echo "heads server at $url_heads (pid $pid_heads)"
  FTRI_URL="$url_heads" CHROMIUM="$chromium" node "$here/patch.mjs" "$art" || status=$?
fi

# Modules and decomposition components (modules.mjs), on the planted model made above.
if [ -n "${FTRI_PLANTED:-}" ] && [ -n "$model" ]; then
  "$bin" modules --model "$model" --corpus "$work/corpus.txt" --layers 1 --k 4 \
    --out "$work/modules" >/dev/null 2>&1 || die "ftri modules failed"
  "$bin" decompose --model "$model" --corpus "$work/corpus.txt" --site blocks.1.mlp.hook_post \
    --k 6 --out "$work/F.safetensors" >/dev/null 2>&1 || die "ftri decompose failed"
  "$bin" serve --atlas "$atlas" --modules "$work/modules" --decomposition "$work/F.safetensors" \
    --host 127.0.0.1 --port 0 2>"$work/serve-mod.log" &
  pid_mod=$!
  trap 'kill "$pid_mod" 2>/dev/null || true; cleanup' EXIT
  url_mod=""
  for _ in $(seq 1 600); do
    url_mod="$(grep -o 'http://127\.0\.0\.1:[0-9]*/' "$work/serve-mod.log" | head -n1 || true)"
    [ -n "$url_mod" ] && break
    kill -0 "$pid_mod" 2>/dev/null || { cat "$work/serve-mod.log" >&2; die "the modules server exited"; }
    sleep 0.1
  done
  [ -n "$url_mod" ] || die "the modules server did not start"
  echo "modules server at $url_mod (pid $pid_mod)"
  FTRI_URL="$url_mod" CHROMIUM="$chromium" node "$here/modules.mjs" "$art" || status=$?
  kill "$pid_mod" 2>/dev/null || true
fi
echo "screenshots in $art"
exit "$status"
