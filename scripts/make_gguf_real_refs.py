#!/usr/bin/env python3
"""Reference activations of the two real GGUF decoders, from transformers.

transformers dequantizes a GGUF file to float32 and runs its own implementation of the
architecture; ftri must give the same numbers at every TransformerLens hook point. This writes
tests/fixtures/gguf_real/<name>/expected.safetensors (metadata: the text, the GGUF file name and
its SHA-256) for the files scripts/fetch_gguf.sh fetches into models/. To keep the fixtures small
the text is short and only the last position's logits are stored (`logits_last`).

The reference runs in float64 (the dequantized weights are exact in either) and is stored as
float32: these real models carry activations in the hundreds, where two float32 implementations
drift apart by ~1e-5 of the maximum over 30 layers from summation order alone, so ftri is checked
in float64 against it at the usual tolerance, and in float32 at a looser one.

    python scripts/make_gguf_real_refs.py            # both
    python scripts/make_gguf_real_refs.py smollm2
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import safetensors.torch
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (Recorder and the hook placements)

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
OUT = REPO / "tests" / "fixtures" / "gguf_real"

# name: (GGUF file, hook installer name in make_fixtures, text)
SPECS = {
    "smollm2": ("SmolLM2-135M-Instruct.Q4_1.gguf", "hooks_llama", "The capital of France is"),
    "gemma3": ("gemma-3-270m-q4_k_m.gguf", "hooks_gemma2", "The capital of France is"),
}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@torch.no_grad()
def make(name: str) -> None:
    file, hooks_name, text = SPECS[name]
    path = MODELS / file
    tok = transformers.AutoTokenizer.from_pretrained(str(MODELS), gguf_file=file)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(MODELS), gguf_file=file, dtype=torch.float32, attn_implementation="eager"
    ).eval().to(torch.float64)
    rec = mf.Recorder()
    getattr(mf, hooks_name)(model, rec)
    ids = tok(text)["input_ids"]
    out = model(input_ids=torch.tensor([ids]))
    tensors = {name: t.to(torch.float32) for name, t in rec.acts.items()}
    tensors["input_ids"] = torch.tensor(ids, dtype=torch.int64)
    tensors["logits_last"] = out.logits[0, -1].to(torch.float32).contiguous().clone()
    dest = OUT / name
    dest.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(
        tensors,
        str(dest / "expected.safetensors"),
        metadata={"text": text, "gguf": file, "sha256": sha256(path), "transformers": transformers.__version__},
    )
    print(f"{name}: {len(ids)} tokens {ids}, {len(tensors)} tensors -> {dest}")


if __name__ == "__main__":
    for n in sys.argv[1:] or list(SPECS):
        make(n)
