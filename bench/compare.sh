#!/usr/bin/env bash
# Side-by-side benchmarks against the PyTorch/transformers way of doing the same job, alternating
# runs on the same machine (it is noisy: compare medians). Needs a python with torch+transformers:
#   PY=/path/to/venv/bin/python bench/compare.sh [RUNS]
# Builds the GPT-2-small-shaped random checkpoint and the benchmark corpus if absent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-python3}"; RUNS="${1:-3}"; W="${WORK:-target/bench}"
mkdir -p "$W"
cargo build --release -q
F=target/release/ftri
[ -d "$W/gpt2-small" ] || $F plant --preset gpt2-small --out "$W/gpt2-small"
[ -f "$W/corpus.txt" ] || "$PY" bench/make_corpus.py --out "$W/corpus.txt"
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
for i in $(seq "$RUNS"); do
  $F bench --model "$W/gpt2-small" --batches 6 --json 2>/dev/null > "$W/fwd-ftri-$i.json"
  "$PY" bench/reference_forward.py --model "$W/gpt2-small" --batches 6 2>/dev/null > "$W/fwd-torch-$i.json"
  $F record --model "$W/gpt2-small" --corpus "$W/corpus.txt" --out "$W/atlas" --top-k 8 --threads 2 --force --json 2>/dev/null > "$W/rec-ftri-$i.json"
  "$PY" bench/reference_record.py --model "$W/gpt2-small" --corpus "$W/corpus.txt" --k 8 --threads 2 2>/dev/null > "$W/rec-torch-$i.json"
done
report() {
  local what=$1
  for impl in ftri torch; do
    tps=$(for f in "$W/$what-$impl"-*.json; do "$PY" -c "import json; print(json.load(open('$f'))['tokens_per_s'])"; done | median)
    rss=$(for f in "$W/$what-$impl"-*.json; do "$PY" -c "import json; print(json.load(open('$f'))['peak_rss_mib'])"; done | median)
    printf '%-8s %-6s median %7.0f tokens/s  peak RSS %6.0f MiB\n' "$what" "$impl" "$tps" "$rss"
  done
}
report fwd
report rec
for f in "$W"/fwd-ftri-1.json "$W"/fwd-torch-1.json; do "$PY" -c "import json; d=json.load(open('$f')); print('$f'.split('/')[-1], 'matmul', round(d['matmul_gflops']), 'GFLOP/s')"; done
