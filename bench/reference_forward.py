"""PyTorch reference for `ftri bench`: the same job done the way a researcher would in Python.

Loads the checkpoint with transformers (base model, no LM head), captures every
`blocks.{l}.mlp.hook_post` (the input of each MLP's down projection) with forward pre-hooks, over
batches of random token ids, and prints tokens/s and the process's peak resident memory as JSON.
A mixture-of-experts model (Mixtral, ...) has no per-expert module to hook in transformers 5 (the
experts are fused parameters), so there every layer's router logits are captured instead — what
`ftri bench --hooks 'blocks.*.mlp.hook_router_logits'` captures (bench/compare.sh passes it).

    python bench/reference_forward.py --model DIR|FILE.gguf [--batch 8] [--seq 128] [--batches 8] [--threads 2]

A GGUF file is loaded as transformers loads one (dequantized to float32).
"""
import argparse, json, os, resource, time

import torch
import transformers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.model.endswith(".gguf"):
        where, name = os.path.split(os.path.abspath(a.model))
        model = transformers.AutoModel.from_pretrained(where, gguf_file=name, dtype=torch.float32).eval()
    else:
        model = transformers.AutoModel.from_pretrained(a.model, dtype=torch.float32).eval()
    cfg = model.config
    # the module whose input is the neuron activations, per architecture
    downs = [m for n, m in model.named_modules() if n.endswith(("mlp.c_proj", "mlp.down_proj", "mlp.dense_4h_to_h", "output.dense")) and "attention" not in n]
    captured = []
    routers = [m for n, m in model.named_modules() if n.endswith("mlp.gate") and type(m).__name__.endswith("Router")]
    if routers:
        # mixture of experts: the router's first output is its logits [tokens, experts]
        downs = routers
        for mod in routers:
            mod.register_forward_hook(lambda _m, _args, out: captured.append(out[0].detach()))
    for mod in [] if routers else downs:
        mod.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    gen = torch.Generator().manual_seed(1)

    def run_batch():
        captured.clear()
        ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), generator=gen)
        with torch.inference_mode():
            model(input_ids=ids)
        return sum(t.numel() for t in captured)

    run_batch()  # warm-up
    start = time.perf_counter()
    values = sum(run_batch() for _ in range(a.batches))
    secs = time.perf_counter() - start
    tokens = a.batches * a.batch * a.seq
    # matmul GFLOP/s measured the same way as `ftri bench` (best of 5)
    x, y = torch.randn(1024, 4096), torch.randn(4096, 1024)
    best = min((lambda t0: (x @ y, time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(5))
    print(json.dumps({
        "impl": f"transformers {transformers.__version__} / torch {torch.__version__}",
        "hooks": len(downs), "tokens": tokens, "seconds": secs, "tokens_per_s": tokens / secs,
        "captured_values": values,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "matmul_gflops": 2 * 1024 * 4096 * 1024 / best / 1e9, "threads": a.threads,
    }, indent=2))


if __name__ == "__main__":
    main()
