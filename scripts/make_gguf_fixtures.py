#!/usr/bin/env python3
"""Generate the tiny GGUF fixtures under tests/fixtures/gguf/.

1. quants/<TYPE>.gguf for every tensor type ftri dequantizes (F32, F16, BF16, Q4_0, Q4_1, Q5_0,
   Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): one 4 x 256 tensor `t` (rows of 256, as k-quants
   need), plus quants/expected.safetensors holding, per type, the values gguf-py's
   `gguf.quants.dequantize` gives (what transformers' GGUF loader uses). The quantized types are
   random blocks with their f16 scale fields set to finite values, so every bit pattern of the
   quantized parts occurs.
2. llama/model.gguf: the Llama fixture's random weights (tests/fixtures/llama) written the way
   llama.cpp's converter writes them (q/k rows permuted for its rotary layout; attention in Q8_0,
   the MLP in F16, the rest F32), with the fixture tokenizer's tokens and merges as metadata; and
   llama/expected.safetensors: every hook point transformers computes after loading that file with
   `AutoModelForCausalLM.from_pretrained(dir, gguf_file="model.gguf")`, for the token ids of the
   Llama fixture's main text (stored as `input_ids`).

Deterministic (fixed seeds). Run from the repository root with a Python that has torch,
transformers, gguf and numpy:

    python scripts/make_gguf_fixtures.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.quants import dequantize

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT = REPO_ROOT / "tests" / "fixtures" / "gguf"
sys.path.insert(0, str(REPO_ROOT / "scripts"))

ROWS, COLS = 4, 256

# Byte offsets of each block's f16 scale fields (d, and dmin/m where the type has one).
BLOCKS = {
    # name: (block bytes, block elements, f16 field offsets)
    "Q4_0": (18, 32, [0]),
    "Q4_1": (20, 32, [0, 2]),
    "Q5_0": (22, 32, [0]),
    "Q5_1": (24, 32, [0, 2]),
    "Q8_0": (34, 32, [0]),
    "Q2_K": (84, 256, [80, 82]),
    "Q3_K": (110, 256, [108]),
    "Q4_K": (144, 256, [0, 2]),
    "Q5_K": (176, 256, [0, 2]),
    "Q6_K": (210, 256, [208]),
}


def quant_fixtures() -> None:
    out = OUT / "quants"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(15)
    expected = {}
    values = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    for name in ["F32", "F16", "BF16", *BLOCKS]:
        qtype = Q[name]
        w = GGUFWriter(str(out / f"{name}.gguf"), arch="test")
        if name == "F32":
            data, raw = values, values.view(np.uint8)
        elif name == "F16":
            data = values.astype(np.float16)
            raw = data.view(np.uint8)
        elif name == "BF16":
            bits = (values.view(np.uint32) >> 16).astype(np.uint16)  # truncation: any bf16 will do
            raw = bits.view(np.uint8).reshape(ROWS, COLS * 2)
            data = None
        else:
            nbytes, nel, f16s = BLOCKS[name]
            blocks = rng.integers(0, 256, size=(ROWS * COLS // nel, nbytes), dtype=np.uint8)
            for off in f16s:
                scales = (rng.uniform(-1.0, 1.0, blocks.shape[0]) / 8).astype(np.float16)
                blocks[:, off : off + 2] = scales.view(np.uint8).reshape(-1, 2)
            raw = blocks.reshape(ROWS, -1)
            data = None
        if name in ("F32", "F16"):
            w.add_tensor("t", data)
        else:
            w.add_tensor("t", raw.reshape(ROWS, -1), raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        raw_bytes = np.ascontiguousarray(raw).view(np.uint8).reshape(ROWS, -1)
        ref = dequantize(raw_bytes, qtype).astype(np.float32)
        assert ref.shape == (ROWS, COLS), (name, ref.shape)
        expected[name] = torch.from_numpy(np.ascontiguousarray(ref))
    safetensors.torch.save_file(expected, str(out / "expected.safetensors"))


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_fixture() -> None:
    import transformers
    from make_fixtures import Recorder, hooks_llama

    src = REPO_ROOT / "tests" / "fixtures" / "llama"
    out = OUT / "llama"
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "config.json").read_text())
    tok = json.loads((src / "tokenizer.json").read_text())
    sd = safetensors.torch.load_file(str(src / "model.safetensors"))
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    w = GGUFWriter(str(out / "model.gguf"), arch="llama")
    w.add_name("ftri llama fixture")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_dimension_count(cfg["head_dim"])
    w.add_vocab_size(cfg["vocab_size"])
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    for a in tok["added_tokens"]:
        assert tokens[a["id"]] == a["content"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in ("<s>", "</s>") else 1 for t in tokens])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]])
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_add_bos_token(True)

    def put(name: str, t: torch.Tensor, qtype: Q = Q.F32) -> None:
        a = t.to(torch.float32).numpy()
        if qtype == Q.F32:
            w.add_tensor(name, a)
        elif qtype == Q.F16:
            w.add_tensor(name, a.astype(np.float16))
        else:
            from gguf.quants import quantize

            w.add_tensor(name, quantize(a, qtype), raw_dtype=qtype)

    put("token_embd.weight", sd["model.embed_tokens.weight"])
    for l in range(cfg["num_hidden_layers"]):
        p, b = f"model.layers.{l}.", f"blk.{l}."
        put(b + "attn_norm.weight", sd[p + "input_layernorm.weight"])
        put(b + "attn_q.weight", torch.from_numpy(llama_permute(sd[p + "self_attn.q_proj.weight"].numpy(), n_head)), Q.Q8_0)
        put(b + "attn_k.weight", torch.from_numpy(llama_permute(sd[p + "self_attn.k_proj.weight"].numpy(), n_kv)), Q.Q8_0)
        put(b + "attn_v.weight", sd[p + "self_attn.v_proj.weight"], Q.Q8_0)
        put(b + "attn_output.weight", sd[p + "self_attn.o_proj.weight"], Q.Q8_0)
        put(b + "ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        put(b + "ffn_gate.weight", sd[p + "mlp.gate_proj.weight"], Q.F16)
        put(b + "ffn_up.weight", sd[p + "mlp.up_proj.weight"], Q.F16)
        put(b + "ffn_down.weight", sd[p + "mlp.down_proj.weight"], Q.F16)
    put("output_norm.weight", sd["model.norm.weight"])
    put("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(out), gguf_file="model.gguf", dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ids = safetensors.torch.load_file(str(src / "expected.safetensors"))["input_ids"]
    rec = Recorder()
    hooks_llama(model, rec)
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits
    tensors = {"input_ids": ids.clone()}
    tensors.update({h: rec.acts[h] for h in rec.order})
    tensors["logits"] = logits[0].to(torch.float32).contiguous()
    safetensors.torch.save_file(tensors, str(out / "expected.safetensors"))


if __name__ == "__main__":
    torch.manual_seed(0)
    quant_fixtures()
    llama_fixture()
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total / 1024:.0f} KiB)")
