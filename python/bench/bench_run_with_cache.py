"""run_with_cache from Python: ftri's bindings against transformers with forward hooks.

Both capture every `blocks.{l}.mlp.hook_post` (the input of each MLP's down projection) of a batch
of texts and hand them back as numpy arrays (a TransformerLens-style cache), or with
`--hooks resid` every residual stream (transformers' output_hidden_states). One implementation per
process, so the peak resident memory is that implementation's:

    python bench_run_with_cache.py --impl ftri  --model DIR [--batch 8] [--words 90] [--batches 8] [--threads 2]
    python bench_run_with_cache.py --impl torch --model DIR ...   (a venv with torch + transformers)

Prints JSON: tokens/s (real tokens, padding not counted) and peak RSS.
"""
import argparse
import json
import os
import random
import resource
import time

WORDS = (
    "the a dog cat river bridge year city built quiet happy sad paid dollars pears "
    "function return value neuron model layer token 1999 2001 12 4.5 Alice Bob Paris "
    "ran slept barked under over with without because however never always"
).split()


def texts(n, words, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words - rng.randrange(0, words // 4))) for _ in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", choices=["ftri", "torch"], required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--words", type=int, default=90)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hooks", choices=["mlp", "resid"], default="mlp")
    a = ap.parse_args()
    batches = [texts(a.batch, a.words, seed) for seed in range(a.batches + 1)]

    if a.impl == "ftri":
        import ftri

        model = ftri.Model.load(a.model, threads=a.threads)
        names = "blocks.*.mlp.hook_post" if a.hooks == "mlp" else "blocks.*.hook_resid_post"

        def run(b):
            _, cache = model.run_with_cache(b, names=names, return_logits=False, batch_size=len(b))
            mask = cache.pop("attention_mask")
            return int(mask.sum()), sum(v.size for v in cache.values())

        label = f"ftri {ftri.__version__} (Python bindings)"
    else:
        import torch
        import transformers

        torch.set_num_threads(a.threads)
        if os.path.isfile(os.path.join(a.model, "tokenizer_config.json")):
            tok = transformers.AutoTokenizer.from_pretrained(a.model)
        else:  # a planted checkpoint (`ftri plant`) has tokenizer.json alone
            tok = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(a.model, "tokenizer.json"))
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.unk_token or tok.convert_ids_to_tokens(0)  # masked out
        model = transformers.AutoModel.from_pretrained(a.model, dtype=torch.float32).eval()
        downs = [
            m
            for n, m in model.named_modules()
            if n.endswith(("mlp.c_proj", "mlp.down_proj", "mlp.dense_4h_to_h", "output.dense")) and "attention" not in n
        ]
        captured = []
        if a.hooks == "mlp":
            for mod in downs:
                mod.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))

        def run(b):
            captured.clear()
            enc = tok(b, return_tensors="pt", padding=True)
            with torch.inference_mode():
                out = model(**enc, output_hidden_states=a.hooks == "resid")
            acts = captured if a.hooks == "mlp" else list(out.hidden_states[1:])
            cache = [t.numpy() for t in acts]  # what a TransformerLens-style cache hands back
            return int(enc["attention_mask"].sum()), sum(c.size for c in cache)

        label = f"transformers {transformers.__version__} / torch {torch.__version__} (forward hooks)"

    run(batches[0])  # warm-up
    start = time.perf_counter()
    tokens = values = 0
    for b in batches[1:]:
        t, v = run(b)
        tokens, values = tokens + t, values + v
    secs = time.perf_counter() - start
    print(
        json.dumps(
            {
                "impl": label,
                "model": os.path.basename(os.path.normpath(a.model)),
                "hooks": a.hooks,
                "tokens": tokens,
                "captured_values": values,
                "seconds": round(secs, 3),
                "tokens_per_s": round(tokens / secs, 1),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "threads": a.threads,
            }
        )
    )


if __name__ == "__main__":
    main()
