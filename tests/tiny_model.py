"""A tiny random-weight BERT with a tiny WordPiece vocabulary: the one builder of the tests and of CI.

Two layers of width 32 and four heads, as transformers tests BERT: every code path runs in
milliseconds. The session fixture ``tiny_bert`` (tests/conftest.py) builds one; CI's lean-install
step builds one with the words of the packaged sample tickets in its vocabulary::

    python -m tests.tiny_model OUT_DIR [--words-from CSV]

It needs only torch and transformers, which a plain ``pip install hrlm`` brings.
"""

from __future__ import annotations

import argparse
import collections
import csv
import re
from collections.abc import Iterable
from pathlib import Path

# the words of the toy tickets of tests/conftest.py: each class draws most of its words from its own list
WORDS = {
    "payroll": ["salary", "payslip", "overtime", "tax", "paid", "wage", "bonus", "deposit"],
    "leave": ["vacation", "sick", "holiday", "absence", "parental", "days", "off", "leave"],
    "it": ["password", "laptop", "vpn", "login", "account", "locked", "email", "access"],
}
FILLER = ["my", "the", "is", "not", "please", "help", "with", "i", "need", "a", "for", "this", "month", "week"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SUFFIXES = ["##s", "##ed", "##ing"]


def vocabulary(extra_words: Iterable[str] = ()) -> list[str]:
    """Special tokens, the toy words and ``extra_words`` (sorted, once each), then a few suffixes."""
    words = {w for ws in WORDS.values() for w in ws} | set(FILLER) | {w.lower() for w in extra_words}
    return SPECIAL + sorted(words - set(SPECIAL) - set(SUFFIXES)) + SUFFIXES


def frequent_words(csv_path: Path, column: str = "text", limit: int = 400) -> list[str]:
    """The ``limit`` most frequent lower-case words of a CSV column."""
    counts: collections.Counter[str] = collections.Counter()
    with csv_path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            counts.update(re.findall(r"[a-z]+", row[column].lower()))
    return [w for w, _ in counts.most_common(limit)]


def build_tiny_bert(folder: Path, extra_words: Iterable[str] = (), seed: int = 0) -> Path:
    """Write a 2-layer BERT of width 32 with random weights and its fast tokenizer into ``folder``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = vocabulary(extra_words)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab={tok: i for i, tok in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(str(folder))
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.tiny_model", description="Write a tiny random-weight BERT.")
    parser.add_argument("out", type=Path, help="folder to write the model into")
    parser.add_argument("--words-from", type=Path, help="CSV whose 'text' column adds its frequent words")
    args = parser.parse_args(argv)
    extra = frequent_words(args.words_from) if args.words_from else []
    build_tiny_bert(args.out, extra)
    print(args.out)


if __name__ == "__main__":
    main()
