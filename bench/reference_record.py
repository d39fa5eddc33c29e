"""PyTorch reference for `ftri record`: the same job written the way a researcher would.

GPT2Model + forward pre-hooks on every `mlp.c_proj` (whose input is `mlp.hook_post`), documents
(one per line) cut into consecutive windows of --ctx tokens as `ftri record --ctx` does, batches of
windows in reading order (right-padded), and per neuron: count, sum and sum of squares (float64),
min, max, fire count, a 64-bin histogram, and the top-k activations with (doc, pos) kept by
merging each batch into the running top-k with `torch.topk`. Prints tokens/s and peak RSS as JSON.

    python bench/reference_record.py --model DIR --corpus corpus.txt [--ctx 128] [--k 8] [--batch 8] [--threads 2]
"""
import argparse, json, resource, time

import torch
import transformers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=f"{a.model}/tokenizer.json")
    model = transformers.GPT2Model.from_pretrained(a.model, torch_dtype=torch.float32).eval()
    docs = [line.rstrip("\n") for line in open(a.corpus, encoding="utf-8")]
    docs = [(i, d) for i, d in enumerate(docs) if d.strip()]
    ctx = min(a.ctx, model.config.n_positions)
    captured = []
    for block in model.h:
        block.mlp.c_proj.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    L, D, K = len(model.h), model.config.n_inner or 4 * model.config.n_embd, a.k
    lo, hi, bins = -4.0, 12.0, 64
    count = 0
    s1 = torch.zeros(L, D, dtype=torch.float64)
    s2 = torch.zeros(L, D, dtype=torch.float64)
    mn = torch.full((L, D), float("inf"))
    mx = torch.full((L, D), float("-inf"))
    fire = torch.zeros(L, D, dtype=torch.int64)
    hist = torch.zeros(L, D, bins + 2, dtype=torch.int64)
    edges = torch.linspace(lo, hi, bins + 1)
    top_act = torch.full((L, K, D), float("-inf"))
    top_doc = torch.full((L, K, D), -1, dtype=torch.int64)
    top_pos = torch.full((L, K, D), -1, dtype=torch.int64)

    start = time.perf_counter()
    # (doc, first position, token ids) of every window, in reading order
    wins = []
    for i, d in docs:
        t = tok(d)["input_ids"]
        wins += [(i, s, t[s:s + ctx]) for s in range(0, len(t), ctx)]
    for b in range(0, len(wins), a.batch):
        chunk = wins[b:b + a.batch]
        ids = [w for _, _, w in chunk]
        T = max(len(x) for x in ids)
        input_ids = torch.tensor([x + [0] * (T - len(x)) for x in ids])
        mask = torch.tensor([[1] * len(x) + [0] * (T - len(x)) for x in ids])
        captured.clear()
        with torch.inference_mode():
            model(input_ids=input_ids, attention_mask=mask)
            valid = mask.bool()
            doc_of = torch.tensor([i for i, _, _ in chunk])[:, None].expand(-1, T)[valid]
            pos_of = (torch.tensor([s for _, s, _ in chunk])[:, None] + torch.arange(T)[None, :])[valid]
            count += int(valid.sum())
            for l, h in enumerate(captured):
                x = h[valid]  # [N, D]
                s1[l] += x.sum(0, dtype=torch.float64)
                s2[l] += (x.double() ** 2).sum(0)
                mn[l] = torch.minimum(mn[l], x.min(0).values)
                mx[l] = torch.maximum(mx[l], x.max(0).values)
                fire[l] += (x > 0).sum(0)
                idx = torch.bucketize(x, edges, right=True)  # 0 = underflow, bins+1 = overflow
                hist[l].scatter_add_(1, idx.T.contiguous(), torch.ones_like(idx.T, dtype=torch.int64))
                cand = torch.cat([top_act[l], x])
                cdoc = torch.cat([top_doc[l], doc_of[:, None].expand(-1, D)])
                cpos = torch.cat([top_pos[l], pos_of[:, None].expand(-1, D)])
                v, i = torch.topk(cand, K, dim=0)
                top_act[l], top_doc[l], top_pos[l] = v, cdoc.gather(0, i), cpos.gather(0, i)
    secs = time.perf_counter() - start
    mean = s1 / count
    var = s2 / count - mean ** 2
    print(json.dumps({
        "impl": f"transformers {transformers.__version__} / torch {torch.__version__}",
        "docs": len(docs), "tokens": count, "seconds": secs, "tokens_per_s": count / secs,
        "units": L * D, "k": K, "mean_of_means": float(mean.mean()), "mean_var": float(var.mean()),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": a.threads,
    }, indent=2))


if __name__ == "__main__":
    main()
