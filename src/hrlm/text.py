"""Text normalisation and sliding windows over token ids.

Long documents are never truncated away by default: a document of more tokens than fit in one
encoder pass is cut into overlapping windows, each window is classified, and the window logits
are aggregated per document. ``head`` and ``head+tail`` truncation are the cheap alternatives.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_BR = re.compile(r"<\s*br\s*/?\s*>", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Normalise a text before tokenisation.

    HTML line breaks become spaces, entities are unescaped, Unicode is put in NFC form and every
    run of white space becomes one space.

    Example:
        >>> normalize("Great  film.<br /><br />Would&nbsp;watch again ")
        'Great film. Would watch again'
    """
    text = _BR.sub(" ", text)
    text = html.unescape(text)
    text = unicodedata.normalize("NFC", text)
    return _SPACE.sub(" ", text).strip()


def window_spans(n_tokens: int, body: int, stride: int) -> list[tuple[int, int]]:
    """Start and end offsets of overlapping windows of at most ``body`` tokens.

    ``stride`` is how many tokens consecutive windows share. The last window is aligned to the end
    of the document so that no window is mostly padding.

    Example:
        >>> window_spans(10, 4, 1)
        [(0, 4), (3, 7), (6, 10)]
    """
    if body < 1:
        raise ValueError("body must be at least 1")
    if n_tokens <= body:
        return [(0, n_tokens)]
    step = max(1, body - stride)
    spans = []
    start = 0
    while start + body < n_tokens:
        spans.append((start, start + body))
        start += step
    spans.append((n_tokens - body, n_tokens))
    return spans


def head_tail(ids: Sequence[int], body: int, head_fraction: float = 0.25) -> list[int]:
    """Keep the first quarter and the last three quarters of ``body`` tokens (Sun et al., 2019)."""
    if len(ids) <= body:
        return list(ids)
    head = int(body * head_fraction)
    tail = body - head
    return list(ids[:head]) + list(ids[len(ids) - tail :])


def special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special token ids a tokenizer puts before and after a single text ([CLS] ... [SEP] for BERT)."""
    backend = tokenizer.backend_tokenizer
    plain = backend.encode("hello", add_special_tokens=False).ids
    full = backend.encode("hello", add_special_tokens=True).ids
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise ValueError("cannot find where the tokenizer puts its special tokens")


@dataclass
class Encoded:
    """Token ids of the windows of a batch of documents.

    ``windows[i]`` holds the ids (special tokens included) of window ``i``; ``doc_index[i]`` is the
    position of its document in the input.
    """

    windows: list[list[int]]
    doc_index: list[int]
    n_docs: int

    @property
    def lengths(self) -> list[int]:
        return [len(w) for w in self.windows]


def encode_documents(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int,
    stride: int = 0,
    truncate: str = "none",
) -> Encoded:
    """Tokenise documents once and cut them into encoder-sized windows.

    Args:
        tokenizer: a Hugging Face fast tokenizer.
        texts: the documents, normalised or not (they are normalised here).
        max_length: tokens per window, special tokens included.
        stride: tokens shared by consecutive windows (``truncate="none"`` only).
        truncate: ``"none"`` for overlapping windows, ``"head"`` or ``"head+tail"`` for one window.

    Returns:
        The windows and, for each, the index of its document.
    """
    prefix, suffix = special_affixes(tokenizer)
    body = max_length - len(prefix) - len(suffix)
    cleaned = [normalize(t) for t in texts]
    encodings = tokenizer.backend_tokenizer.encode_batch(cleaned, add_special_tokens=False)
    windows: list[list[int]] = []
    doc_index: list[int] = []
    for doc, enc in enumerate(encodings):
        ids = enc.ids
        if truncate == "head":
            pieces = [ids[:body]]
        elif truncate == "head+tail":
            pieces = [head_tail(ids, body)]
        else:
            pieces = [ids[a:b] for a, b in window_spans(len(ids), body, stride)]
        for piece in pieces:
            windows.append([*prefix, *piece, *suffix])
            doc_index.append(doc)
    return Encoded(windows=windows, doc_index=doc_index, n_docs=len(texts))
