#!/usr/bin/env python3
"""Reference token ids for the tokenizers ftri builds from GGUF metadata (tests/gguf_tokenizer.rs).

For each case, transformers loads the tokenizer of a GGUF file exactly as a user would
(`AutoTokenizer.from_pretrained(dir, gguf_file=...)`) and we record, for a fixed list of texts, the
ids with the default special tokens (`tok(text)["input_ids"]`) and without
(`add_special_tokens=False`), the text of single tokens (`tok.decode([id])`), and which ids are
added tokens, special or not. The Rust test rebuilds each tokenizer from the same metadata and
must agree on all of it.

Cases are the two real files scripts/fetch_gguf.sh fetches, and "variants": the same file with a
few metadata keys changed (another `general.architecture`, whose `<arch>.*` keys are renamed with
it, or another `tokenizer.ggml.pre`), written to a temporary GGUF without tensors. They reach the
builders and split regexes the real files do not (Qwen2, Llama 3, Tekken, plain SentencePiece,
Phi-3) with real vocabularies. The edits are recorded in the JSON so the test applies the same ones.

Run from the repository root, after scripts/fetch_gguf.sh (CPU only, about a minute):

    python scripts/make_gguf_tokenizer_refs.py            # every case
    python scripts/make_gguf_tokenizer_refs.py smollm2    # some

Deterministic: the same versions (transformers 5.24.0, tokenizers 0.23.3, gguf) give byte-identical
files.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from gguf import GGUFReader, GGUFValueType, GGUFWriter
from transformers import AutoTokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS = REPO_ROOT / "models"
OUT = REPO_ROOT / "tests" / "fixtures" / "gguf_tokenizer"

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3 = "gemma-3-270m-q4_k_m.gguf"

# name -> (file, architecture to rename to or None, metadata keys to set (string or bool values))
CASES = {
    "smollm2": (SMOLLM2, None, {}),
    "gemma3": (GEMMA3, None, {}),
    # byte-level BPE with each family of split regex, and the classes of those architectures
    "smollm2_qwen2": (SMOLLM2, "qwen2", {"tokenizer.ggml.pre": "qwen2"}),
    "smollm2_llama3": (SMOLLM2, None, {"tokenizer.ggml.pre": "llama-bpe", "tokenizer.ggml.add_bos_token": True}),
    "smollm2_tekken": (SMOLLM2, "mistral", {"tokenizer.ggml.pre": "tekken", "tokenizer.ggml.add_eos_token": True}),
    # a SentencePiece vocabulary under Llama's and Phi-3's builders (merges from the scores)
    "gemma3_llama": (GEMMA3, "llama", {}),
    "gemma3_phi3": (GEMMA3, "phi3", {"tokenizer.ggml.add_bos_token": False}),
}

TEXTS = [
    "",
    "Hello world",
    "Hello, world! How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "trailing spaces   ",
    "multiple    spaces   inside",
    " ",
    "   ",
    "line one\nline two",
    "\n\nparagraph\n\n\nbreaks\n",
    "tab\tseparated\tvalues",
    "\t indented with tab and space",
    "mixed \r\n line endings\r\n",
    "Digits 0123456789 and 3.14159 and 1,000,000",
    "Year 2024, phone +1-555-0100",
    "Punctuation!?... (parens) [brackets] {braces} <angles> \"quotes\" 'single'",
    "Contractions: I'm, you're, it's, we'll, they've, don't, I'd",
    "UPPER CASE and MiXeD cAsE",
    "café naïve résumé Ångström façade",
    "Le renard brun rapide saute par-dessus le chien paresseux. Où est-il ?",
    "Emoji: 😀🎉👍🏽 and ❤️",
    "中文文本：你好，世界！",
    "日本語のテキストとカタカナ",
    "한국어 텍스트",
    "Русский текст и греческий: αβγ",
    "Arabic: مرحبا بالعالم",
    "def f(x):\n    return x ** 2  # square\n",
    "fn main() { println!(\"{}\", 1 + 2); }",
    "<html><body class=\"x\">&amp;</body></html>",
    "https://example.com/path?query=1&b=2#frag",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>after end",
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text after bos<eos>",
    "<s>sentencepiece</s> <unk>",
    "▁already▁metaspace▁",
    "zero\u200bwidth and non\u00a0breaking",
    "a",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]


def write_variant(src: Path, dst: Path, arch: str | None, sets: dict) -> None:
    """Copy src's metadata (no tensors) to dst, renamed to `arch` and with `sets` applied."""
    reader = GGUFReader(src)
    old = reader.fields["general.architecture"].contents()
    arch = arch or old
    writer = GGUFWriter(dst, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in sets:
            continue
        new_key = arch + key[len(old) :] if key.startswith(old + ".") else key
        value, types = field.contents(), field.types
        if types[0] == GGUFValueType.ARRAY:
            writer.add_key_value(new_key, value, GGUFValueType.ARRAY, sub_type=types[1])
        else:
            writer.add_key_value(new_key, value, types[0])
    for key, value in sets.items():
        kind = GGUFValueType.BOOL if isinstance(value, bool) else GGUFValueType.STRING
        writer.add_key_value(key, value, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def reference(path: Path) -> dict:
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    with_special = [tok(t)["input_ids"] for t in TEXTS]
    plain = [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    added = tok.backend_tokenizer.get_added_tokens_decoder()
    vocab = tok.backend_tokenizer.get_vocab_size(with_added_tokens=True)
    # single-token decodes: the first ids (specials, bytes), an even spread, and every id used above
    ids = set(range(min(64, vocab))) | set(range(0, vocab, max(1, vocab // 200)))
    ids |= {i for seq in with_special + plain for i in seq}
    return {
        "tokenizer_class": type(tok).__name__,
        "vocab_size": vocab,
        "ids": with_special,
        "ids_plain": plain,
        "special_ids": sorted(i for i, t in added.items() if t.special),
        "added_ids": sorted(i for i, t in added.items() if not t.special),
        "decode": [[i, tok.decode([i])] for i in sorted(ids)],
    }


def main(names: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in names or CASES:
        file, arch, sets = CASES[name]
        src = MODELS / file
        if not src.exists():
            sys.exit(f"{src} is absent: run scripts/fetch_gguf.sh")
        if arch is None and not sets:
            ref = reference(src)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                dst = Path(tmp) / f"{name}.gguf"
                write_variant(src, dst, arch, sets)
                ref = reference(dst)
        out = {"file": file, "architecture": arch, "set": sets, "texts": TEXTS, **ref}
        (OUT / f"{name}.json").write_text(json.dumps(out, ensure_ascii=False, indent=0) + "\n")
        print(f"{name}: {ref['tokenizer_class']}, {len(TEXTS)} texts -> {OUT / (name + '.json')}")


if __name__ == "__main__":
    main(sys.argv[1:])
