#!/usr/bin/env bash
# Run every verb on the fixtures, a planted model and the demo, and write what each printed (and
# hashes of the files it wrote) into DIR. Run it before and after a refactor and `diff -r` the two
# folders: outputs must be byte-identical. Timings (seconds, tokens/s, RSS) are filtered out.
#   scripts/golden_outputs.sh path/to/ftri DIR
set -uo pipefail
bin=$(realpath "$1"); out=$2
root=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$out"; mkdir -p "$out"; out=$(realpath "$out")
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cd "$work"
n=0
run() { # name, command...
  local name=$1; shift
  "$@" > "$out/$name.out" 2> "$out/$name.err"; echo "exit $?" >> "$out/$name.out"
  # stderr: keep error lines only (progress and timing lines vary run to run)
  grep -E '^error' "$out/$name.err" > "$out/$name.err2"; mv "$out/$name.err2" "$out/$name.err"
}
hashes() { (cd "$1" && find . -type f ! -name '*.tmp' | sort | xargs sha256sum) ; }
F=$root/tests/fixtures
for fx in gpt2 llama llama3 mistral qwen2 gpt_neox gpt_neox_seq bert; do
  run info-$fx "$bin" info --model "$F/$fx"
  run info-json-$fx "$bin" info --model "$F/$fx" --json
  run trace-$fx "$bin" trace --model "$F/$fx" --text "The quick brown fox" --out "$work/t-$fx.safetensors"
  # the tensor bytes (the JSON header's metadata order varies run to run)
  hlen=$(od -An -t u8 -N 8 "$work/t-$fx.safetensors" | tr -d ' ')
  tail -c +$((9 + hlen)) "$work/t-$fx.safetensors" | sha256sum > "$out/trace-$fx.sha"
done
run plant-gpt2 "$bin" plant --out p-gpt2 --neuron 1.5:dog,puppy:bark --seed 3
run plant-llama "$bin" plant --arch llama --out p-llama --neuron 1.5:dog,puppy:bark --seed 3
hashes p-gpt2 > "$out/plant-gpt2.sha"; hashes p-llama > "$out/plant-llama.sha"
# Sentences over the planted vocabulary (w1..w999, dog, puppy, bark).
w() { echo "w$(( ($1 * 7 + $2 * 13) % 250 + 10 ))"; }
for i in $(seq 1 60); do echo "$(w $i 1) $(w $i 2) dog $(w $i 3) $(w $i 4) $(w $i 5) puppy $(w $i 6)"; echo "$(w $i 7) $(w $i 8) $(w $i 9)"; done > corpus.txt
for i in $(seq 1 20); do echo "$(w $i 1) dog $(w $i 2) $(w $i 3)"; done > target.txt
for i in $(seq 1 20); do echo "$(w $i 1) $(w $i 5) $(w $i 2) $(w $i 3)"; done > control.txt
for i in $(seq 1 10); do echo "{\"prompt\": \"$(w $i 1) $(w $i 2) dog\", \"target\": \" bark\"}"; done > eval.jsonl
for i in $(seq 1 10); do echo "{\"text\": \"$(w $i 1) $(w $i 2) dog\", \"target\": \" bark\"}"; done > target.jsonl
for i in $(seq 1 10); do echo "{\"text\": \"$(w $i 1) $(w $i 2) $(w $i 4)\", \"target\": \" bark\"}"; done > control.jsonl
for m in gpt2 llama; do
  run record-$m "$bin" record --model p-$m --corpus corpus.txt --out a-$m --json --top-k 5 --batch 4 --ctx 16
  sed -i -E '/"(seconds|tokens_per_s|peak_rss_mib)"/d' "$out/record-$m.out"
  hashes a-$m > "$out/record-$m.sha"
  run record-shard0-$m "$bin" record --model p-$m --corpus corpus.txt --out s0-$m --shard 0/2 --top-k 5 --ctx 16
  run record-shard1-$m "$bin" record --model p-$m --corpus corpus.txt --out s1-$m --shard 1/2 --top-k 5 --ctx 16
  run merge-$m "$bin" merge s0-$m s1-$m --out mg-$m
  hashes mg-$m > "$out/merge-$m.sha"
  run record-stop-$m "$bin" record --model p-$m --corpus corpus.txt --out r-$m --top-k 5 --ctx 16 --stop-after-docs 30
  run record-resume-$m "$bin" record --model p-$m --corpus corpus.txt --out r-$m --top-k 5 --ctx 16 --resume
  hashes r-$m > "$out/resume-$m.sha"
  run show-$m "$bin" show --atlas a-$m --neuron 1.5
  run show-json-$m "$bin" show --atlas a-$m --neuron 1.5 --json
  run show-hook-$m "$bin" show --atlas a-$m --neuron blocks.0.mlp.hook_post:7 --json
  run show-bad-$m "$bin" show --atlas a-$m --neuron 9.5
  run atlas-$m "$bin" atlas --atlas a-$m
  run atlas-json-$m "$bin" atlas --atlas a-$m --json
  run localize-$m "$bin" localize --model p-$m --target target.txt --control control.txt --top 10
  run localize-json-$m "$bin" localize --model p-$m --target target.txt --control control.txt --top 10 --json
  run localize-max-$m "$bin" localize --model p-$m --target target.txt --control control.txt --top 5 --reduce max --layers 1 --json
  run localize-attr-$m "$bin" localize --model p-$m --target target.jsonl --control control.jsonl --top 5 --method attribution --json
  run describe-$m "$bin" describe --model p-$m --neuron 1.5
  run describe-json-$m "$bin" describe --model p-$m --neuron 1.5 --json --top 5
  run describe-all-$m "$bin" describe --model p-$m --all --out d-$m.csv
  sha256sum < d-$m.csv > "$out/describe-all-$m.sha"
  sed -i -E '/GFLOP|overall/d' "$out/describe-all-$m.out"
  run lesion-$m "$bin" lesion --model p-$m --neurons 1.5 --eval eval.jsonl --random-baseline 3 --control-eval eval.jsonl
  run lesion-json-$m "$bin" lesion --model p-$m --neurons 1.5 --eval eval.jsonl --random-baseline 3 --json
  run lesion-mean-$m "$bin" lesion --model p-$m --neurons 1.5,0.3 --op mean --atlas a-$m --eval eval.jsonl --json
  run lesion-scale-$m "$bin" lesion --model p-$m --neurons 1.5 --op scale=3 --positions 3,4 --eval eval.jsonl
  run generate-$m "$bin" generate --model p-$m --prompt "w1 w2 dog" --max-new-tokens 8
  run generate-clamp-$m "$bin" generate --model p-$m --prompt "w1 w2 w3" --neurons 1.5 --op set=8 --max-new-tokens 8
  run generate-sample-$m "$bin" generate --model p-$m --prompt "w1 w2 w3" --max-new-tokens 8 --temperature 1.0 --seed 4
done
run bad-model "$bin" info --model /nonexistent
run bad-neuron "$bin" lesion --model p-gpt2 --neurons 7.5 --eval eval.jsonl
if [ -f "$root/models/all-MiniLM-L6-v2/model.safetensors" ]; then
  run demo-json "$bin" demo --no-serve --model "$root/models/all-MiniLM-L6-v2" --out demo --json
  sed -i -E 's#"(atlas|model)": ".*"#"\1": "X"#' "$out/demo-json.out"
  run demo-text "$bin" demo --no-serve --model "$root/models/all-MiniLM-L6-v2" --out demo2
  sed -i -E '2s#^ftri demo — .* \(#ftri demo — X (#' "$out/demo-text.out"
  run demo-show "$bin" show --atlas demo/atlas --neuron 3.100 --json
  run demo-atlas "$bin" atlas --atlas demo/atlas --json
  sed -i -E 's#"(atlas|model)": ".*"#"\1": "X"#' "$out/demo-atlas.out"
fi
# atlas paths in summaries name the temp dir
sed -i -E "s#$work#WORK#g" "$out"/*.out "$out"/*.err 2>/dev/null
echo "golden outputs in $out ($(ls "$out" | wc -l) files)"
