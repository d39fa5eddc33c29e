"""Benchmark corpus for `ftri record` vs bench/reference_record.py: documents of random words of the
synthetic word-level vocabulary (`w1` … `wN`, one token each), one document per line.

    python bench/make_corpus.py --out corpus.txt [--docs 300] [--min 32] [--max 64] [--vocab 50257]
"""
import argparse, random


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--docs", type=int, default=300)
    ap.add_argument("--min", type=int, default=32)
    ap.add_argument("--max", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    with open(a.out, "w") as f:
        for _ in range(a.docs):
            n = rng.randint(a.min, a.max)
            f.write(" ".join(f"w{rng.randint(1, a.vocab - 1)}" for _ in range(n)) + "\n")


if __name__ == "__main__":
    main()
