#!/usr/bin/env bash
# Speed and memory of `ftri record` against the forward pass alone (`ftri bench`, the same model
# and batch shape: 8 windows of 128 tokens, all 12 `mlp.hook_post`), and side by side with the
# PyTorch/transformers way of doing the same two jobs when the python given has torch and
# transformers. Runs alternate on the same machine (it is noisy: compare medians).
#   [PY=/path/to/venv/bin/python] bench/compare.sh [RUNS]
# With MODEL=PATH (a checkpoint folder or a .gguf file, e.g. models/SmolLM2-135M-Instruct.Q4_1.gguf)
# only the forward job runs, on that model (the PyTorch record reference is GPT-2 specific).
# MODEL=mixtral-small builds a Mixtral-shaped random checkpoint (`ftri plant --preset mixtral-small`:
# 8 layers, d_model 512, 8 experts of 1024, top-2) under target/bench/ and runs the forward job on
# it; on a mixture-of-experts model both sides capture every layer's router logits (transformers
# has no per-expert module to hook).
# Builds the GPT-2-small-shaped random checkpoint and the benchmark corpus (bench/make_corpus.py:
# real-ish text, documents of 7–400 tokens) under target/bench/ if absent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-python3}"; RUNS="${1:-3}"; W="${WORK:-target/bench}"
mkdir -p "$W"
cargo build --release -q
F=target/release/ftri
M="${MODEL:-$W/gpt2-small}"
if [ "${MODEL:-}" = mixtral-small ]; then
  M="$W/mixtral-small"
  [ -d "$M" ] || $F plant --preset mixtral-small --out "$M"
fi
HOOKS=(); if [ -f "$M/config.json" ] && grep -q '"num_\(local_\)\?experts"' "$M/config.json"; then
  HOOKS=(--hooks 'blocks.*.mlp.hook_router_logits'); fi
[ -n "${MODEL:-}" ] || [ -d "$W/gpt2-small" ] || $F plant --preset gpt2-small --out "$W/gpt2-small"
[ -f "$W/corpus.txt" ] || python3 bench/make_corpus.py --out "$W/corpus.txt"
TORCH=0
if "$PY" -c "import torch, transformers" 2>/dev/null; then TORCH=1; else
  echo "($PY has no torch/transformers: ftri figures only)" >&2; fi
IMPLS=ftri; [ $TORCH = 1 ] && IMPLS="ftri torch"
rm -f "$W"/fwd-*.json "$W"/rec-*.json
for i in $(seq "$RUNS"); do
  $F bench --model "$M" --batch 8 --seq 128 --batches 6 ${HOOKS[@]+"${HOOKS[@]}"} --json 2>/dev/null > "$W/fwd-ftri-$i.json"
  if [ $TORCH = 1 ]; then
    "$PY" bench/reference_forward.py --model "$M" --batch 8 --seq 128 --batches 6 2>/dev/null > "$W/fwd-torch-$i.json"
  fi
  [ -z "${MODEL:-}" ] || continue
  $F record --model "$W/gpt2-small" --corpus "$W/corpus.txt" --out "$W/atlas" --ctx 128 --batch 8 --top-k 8 \
    --threads 2 --force --json 2>/dev/null > "$W/rec-ftri-$i.json"
  if [ $TORCH = 1 ]; then
    "$PY" bench/reference_record.py --model "$W/gpt2-small" --corpus "$W/corpus.txt" --ctx 128 --batch 8 --k 8 \
      --threads 2 2>/dev/null > "$W/rec-torch-$i.json"
  fi
done
# median of field $3 over the runs of job $1 by implementation $2
med() {
  python3 - "$W" "$1" "$2" "$3" <<'PYEOF'
import glob, json, statistics, sys
w, job, impl, field = sys.argv[1:]
print(statistics.median(json.load(open(f))[field] for f in glob.glob(f"{w}/{job}-{impl}-*.json")))
PYEOF
}
JOBS="fwd rec"; [ -z "${MODEL:-}" ] || JOBS=fwd
for job in $JOBS; do
  for impl in $IMPLS; do
    printf '%-4s %-6s median %7.0f tokens/s  peak RSS %6.0f MiB\n' "$job" "$impl" \
      "$(med $job $impl tokens_per_s)" "$(med $job $impl peak_rss_mib)"
  done
done
if [ -n "${MODEL:-}" ]; then
  [ $TORCH = 0 ] || python3 -c "print('forward ftri / torch on $M: %.2fx speed, %.2fx memory' % ($(med fwd ftri tokens_per_s) / $(med fwd torch tokens_per_s), $(med fwd ftri peak_rss_mib) / $(med fwd torch peak_rss_mib)))"
  exit 0
fi
python3 - "$W" "$RUNS" <<'PYEOF'
import json, statistics, sys
w, runs = sys.argv[1], int(sys.argv[2])
tps = lambda job, i: json.load(open(f"{w}/{job}-ftri-{i}.json"))["tokens_per_s"]
pairs = [tps("rec", i) / tps("fwd", i) for i in range(1, runs + 1)]
print("record / forward (ftri): %.0f %% (medians), %.0f %% (median of the runs' ratios: %s)" % (
    100 * statistics.median(tps("rec", i) for i in range(1, runs + 1))
    / statistics.median(tps("fwd", i) for i in range(1, runs + 1)),
    100 * statistics.median(pairs), ", ".join("%.0f" % (100 * p) for p in pairs)))
PYEOF
if [ $TORCH = 1 ]; then
  python3 -c "print('record ftri / torch: %.2fx speed, %.2fx memory' % ($(med rec ftri tokens_per_s) / $(med rec torch tokens_per_s), $(med rec ftri peak_rss_mib) / $(med rec torch peak_rss_mib)))"
fi
python3 -c "import json; print('matmul', round(json.load(open('$W/fwd-ftri-1.json'))['matmul_gflops']), 'GFLOP/s')"
