"""What a masked language model learns from: corpus reading, pretraining examples and masking.

Documents are cut into encoder-sized pieces (masked LM) or sentence pairs (next-sentence
prediction); :func:`mask_tokens` draws BERT's masks, over word pieces or whole words.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hrlm.config import PretrainConfig
from hrlm.data import read_table
from hrlm.errors import ConfigError, DataError
from hrlm.text import normalize, special_affixes

IGNORE = -100  # label of positions that carry no masked-LM loss
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
MIN_TOKENS = 8  # shorter pieces teach little and are dropped


@dataclass
class Example:
    """One pretraining input: token ids with special tokens, segment ids, word ids and the NSP label."""

    ids: list[int]
    types: list[int]
    words: list[int]  # word number per token, -1 for special tokens
    is_random_next: int = -1  # 1: segment B is a random sentence, 0: the true next, -1: no NSP


def read_corpus(path: str | Path, text_col: str = "text") -> list[str]:
    """Documents of an unlabelled corpus.

    ``path`` is a folder of ``.txt`` files (one document per file), a ``.txt`` file (one document
    per non-empty line), or a CSV/TSV/JSONL/Parquet file whose ``text_col`` holds the documents.

    Raises:
        DataError: the path is missing, holds no text, or lacks the column.
    """
    p = Path(path)
    if p.is_dir():
        files = sorted(p.rglob("*.txt"))
        if not files:
            raise DataError(f"folder {str(p)!r} holds no .txt files; pass a folder of .txt files or a data file.")
        docs = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    else:
        frame = read_table(p)
        if text_col not in frame.columns:
            raise DataError(
                f"{p}: no column {text_col!r}; columns are {list(frame.columns)}. Pass --text-col with one of them."
            )
        docs = [str(t) for t in frame[text_col].tolist()]
    docs = [normalize(d) for d in docs]
    docs = [d for d in docs if d]
    if not docs:
        raise DataError(f"{p}: no non-empty text to pretrain on.")
    return docs


def split_sentences(text: str) -> list[str]:
    """Sentences of a normalised text, cut after ., ! or ? followed by a capital or a digit.

    Example:
        >>> split_sentences("I applied in May. HR replied! Was it fast? yes, 2 days.")
        ['I applied in May.', 'HR replied!', 'Was it fast? yes, 2 days.']
    """
    return [s for s in _SENTENCE_END.split(text) if s.strip()]


def _word_numbers(word_ids: Sequence[int | None]) -> list[int]:
    return [-1 if w is None else int(w) for w in word_ids]


def build_mlm_examples(tokenizer: Any, docs: Sequence[str], max_length: int) -> list[Example]:
    """Each document cut into consecutive pieces that fill one encoder input (no token is dropped)."""
    prefix, suffix = special_affixes(tokenizer)
    body = max_length - len(prefix) - len(suffix)
    examples = []
    for enc in tokenizer.backend_tokenizer.encode_batch(list(docs), add_special_tokens=False):
        ids, words = enc.ids, _word_numbers(enc.word_ids)
        for start in range(0, len(ids), body):
            piece = ids[start : start + body]
            if len(piece) < MIN_TOKENS and start > 0:
                continue
            w = words[start : start + body]
            examples.append(
                Example(
                    ids=[*prefix, *piece, *suffix],
                    types=[0] * (len(piece) + len(prefix) + len(suffix)),
                    words=[-1] * len(prefix) + w + [-1] * len(suffix),
                )
            )
    return examples


def build_nsp_examples(tokenizer: Any, docs: Sequence[str], max_length: int, rng: random.Random) -> list[Example]:
    """Sentence pairs ``[CLS] A [SEP] B [SEP]``: B follows A in its document half of the time.

    Segment A takes consecutive sentences up to about half the budget; B the sentences after it, or,
    for the other half, sentences from another document. Documents of one sentence give no pair.
    """
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:
        raise ConfigError("next-sentence prediction needs a tokenizer with [CLS] and [SEP] tokens; drop --nsp.")
    body = max_length - 3
    sentences = [split_sentences(d) for d in docs]
    flat = [s for sents in sentences for s in sents]
    encoded = tokenizer.backend_tokenizer.encode_batch(flat, add_special_tokens=False) if flat else []
    per_doc: list[list[tuple[list[int], list[int]]]] = []
    k = 0
    for doc_sentences in sentences:
        n = len(doc_sentences)
        per_doc.append([(encoded[k + j].ids, _word_numbers(encoded[k + j].word_ids)) for j in range(n)])
        k += n
    examples = []
    for d, sents in enumerate(per_doc):
        i = 0
        while i < len(sents) - 1:
            a_ids: list[int] = []
            a_words: list[int] = []
            while i < len(sents) - 1 and (not a_ids or len(a_ids) + len(sents[i][0]) <= body // 2):
                offset = max(a_words, default=-1) + 1
                a_ids += sents[i][0]
                a_words += [w + offset for w in sents[i][1]]
                i += 1
            random_next = len(per_doc) > 1 and rng.random() < 0.5
            if random_next:
                other = rng.randrange(len(per_doc) - 1)
                other += other >= d
                source, j = per_doc[other], rng.randrange(max(1, len(per_doc[other])))
            else:
                source, j = sents, i
            b_ids: list[int] = []
            b_words: list[int] = []
            while j < len(source) and len(a_ids) + len(b_ids) < body:
                offset = max(b_words, default=-1) + 1
                b_ids += source[j][0]
                b_words += [w + offset for w in source[j][1]]
                j += 1
            if not b_ids:
                continue
            a_ids, a_words = a_ids[: body - 1], a_words[: body - 1]
            b_ids, b_words = b_ids[: body - len(a_ids)], b_words[: body - len(a_ids)]
            shift = max(a_words, default=-1) + 1
            examples.append(
                Example(
                    ids=[cls_id, *a_ids, sep_id, *b_ids, sep_id],
                    types=[0] * (len(a_ids) + 2) + [1] * (len(b_ids) + 1),
                    words=[-1, *a_words, -1, *[w + shift for w in b_words], -1],
                    is_random_next=int(random_next),
                )
            )
    return examples


def mask_tokens(
    ids: torch.Tensor,
    words: torch.Tensor,
    *,
    probability: float,
    whole_word: bool,
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: choose ``probability`` of the tokens (or of the words, with ``whole_word``);
    of those, 80% become the mask token, 10% a random token, 10% stay as they are.

    Args:
        ids: token ids, shape (batch, length).
        words: word number of each token, -1 for special tokens and padding.

    Returns:
        The masked ids and the labels (the original id where chosen, -100 elsewhere).
    """
    maskable = words >= 0
    if whole_word:
        n_words = int(words.max().item()) + 1 if maskable.any() else 1
        chosen_words = torch.rand((ids.shape[0], n_words), generator=generator) < probability
        chosen = torch.gather(chosen_words, 1, words.clamp(min=0)) & maskable
    else:
        chosen = (torch.rand(ids.shape, generator=generator) < probability) & maskable
    if not chosen.any():  # a tiny batch can draw no mask; take one token so the loss is defined
        candidates = maskable.nonzero()
        pick = candidates[torch.randint(len(candidates), (1,), generator=generator)]
        chosen[pick[0, 0], pick[0, 1]] = True
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    roll = torch.rand(ids.shape, generator=generator)
    masked = ids.clone()
    masked[chosen & (roll < 0.8)] = mask_id
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    masked[swap] = torch.randint(vocab_size, ids.shape, generator=generator)[swap]
    return masked, labels


@dataclass
class Batch:
    ids: torch.Tensor
    mask: torch.Tensor
    types: torch.Tensor
    labels: torch.Tensor
    nsp: torch.Tensor | None


def collate_examples(
    examples: Sequence[Example], cfg: PretrainConfig, *, pad_id: int, mask_id: int, vocab_size: int, g: torch.Generator
) -> Batch:
    """Pad a batch, draw its masks, and attach the NSP labels."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    types = torch.zeros((len(examples), width), dtype=torch.long)
    words = torch.full((len(examples), width), -1, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.ids)
        ids[row, :n] = torch.as_tensor(e.ids)
        types[row, :n] = torch.as_tensor(e.types)
        words[row, :n] = torch.as_tensor(e.words)
        attn[row, :n] = 1
    masked, labels = mask_tokens(
        ids,
        words,
        probability=cfg.mlm_probability,
        whole_word=cfg.whole_word,
        mask_id=mask_id,
        vocab_size=vocab_size,
        generator=g,
    )
    nsp = torch.tensor([e.is_random_next for e in examples]) if cfg.nsp else None
    return Batch(masked, attn, types, labels, nsp)
