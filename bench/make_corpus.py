"""Benchmark corpus for `ftri record` vs bench/reference_record.py, one document per line, in the
synthetic word-level vocabulary of `ftri plant` (`w1` … `wN`, one token each).

Default (`--from data/demo_corpus.txt`): real-ish text. Consecutive sentences of the given file are
joined into documents of varied length (a log-uniform number of sentences, 1..--max-lines, so most
documents are short and some span several `--ctx 128` windows), and every word or punctuation mark
is mapped to `w{rank}` by its frequency rank in that file, so token frequencies follow the text's
Zipf law. With `--from ''`: documents of --min..--max uniformly random words (the old corpus).

    python bench/make_corpus.py --out corpus.txt [--from data/demo_corpus.txt] [--docs 480]
        [--max-lines 40] [--seed 0]
"""
import argparse, collections, math, random, re


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--from", dest="source", default="data/demo_corpus.txt")
    ap.add_argument("--docs", type=int, default=480)
    ap.add_argument("--max-lines", type=int, default=40)
    ap.add_argument("--min", type=int, default=32)
    ap.add_argument("--max", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    out = []
    if a.source:
        # the Whitespace pre-tokenizer's split: runs of word characters, runs of punctuation
        lines = [re.findall(r"\w+|[^\w\s]+", l) for l in open(a.source, encoding="utf-8")]
        lines = [l for l in lines if l]
        freq = collections.Counter(w for l in lines for w in l)
        rank = {w: i + 1 for i, (w, _) in enumerate(freq.most_common())}
        at = 0
        for _ in range(a.docs):
            n = int(math.exp(rng.uniform(0, math.log(a.max_lines))))
            words = []
            for _ in range(n):
                words += [f"w{min(rank[w], a.vocab - 1)}" for w in lines[at % len(lines)]]
                at += 1
            out.append(" ".join(words))
            at += rng.randint(0, len(lines) - 1)
    else:
        for _ in range(a.docs):
            n = rng.randint(a.min, a.max)
            out.append(" ".join(f"w{rng.randint(1, a.vocab - 1)}" for _ in range(n)))
    with open(a.out, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
