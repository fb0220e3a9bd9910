from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from hrlm.encoders import load_tokenizer
from hrlm.text import encode_documents, head_tail, normalize, window_spans


def test_normalize_html_breaks_entities_and_spaces() -> None:
    assert normalize("Great  film.<br /><br />Would&nbsp;watch\n\tagain ") == "Great film. Would watch again"
    assert normalize("<BR>a<br/>b") == "a b"


@pytest.mark.parametrize(("n", "body", "stride"), [(10, 4, 1), (100, 30, 10), (31, 30, 0), (5, 30, 10), (64, 16, 8)])
def test_windows_cover_every_token_with_the_given_overlap(n: int, body: int, stride: int) -> None:
    spans = window_spans(n, body, stride)
    covered = set()
    for a, b in spans:
        assert 0 <= a < b <= n and b - a == min(body, n)
        covered.update(range(a, b))
    assert covered == set(range(n))
    for (_, b1), (a2, _) in itertools.pairwise(spans):
        assert b1 - a2 >= stride  # consecutive windows share at least `stride` tokens
    assert spans[-1][1] == n


def test_head_tail_keeps_both_ends() -> None:
    ids = list(range(100))
    kept = head_tail(ids, 20)
    assert len(kept) == 20 and kept[:5] == [0, 1, 2, 3, 4] and kept[-15:] == list(range(85, 100))
    assert head_tail(ids[:10], 20) == ids[:10]


def test_encode_documents_windows_and_truncation(tiny_bert: Path) -> None:
    tok = load_tokenizer(tiny_bert)
    long = " ".join(["salary"] * 40)
    enc = encode_documents(tok, ["vpn locked", long], max_length=16, stride=4)
    assert enc.n_docs == 2
    assert enc.doc_index.count(0) == 1 and enc.doc_index.count(1) > 1
    cls, sep = tok.cls_token_id, tok.sep_token_id
    assert all(w[0] == cls and w[-1] == sep and len(w) <= 16 for w in enc.windows)
    # every token of the long document is in some window: nothing is truncated away
    body = sum(len(w) - 2 for w, d in zip(enc.windows, enc.doc_index, strict=True) if d == 1)
    assert body >= 40
    head = encode_documents(tok, [long], max_length=16, truncate="head+tail")
    assert len(head.windows) == 1 and len(head.windows[0]) == 16


def test_tokenizer_truncation_setting_is_ignored(tiny_bert: Path) -> None:
    tok = load_tokenizer(tiny_bert)
    tok.backend_tokenizer.enable_truncation(max_length=5)
    tok = load_tokenizer(tiny_bert)  # loading again switches it off
    enc = encode_documents(tok, [" ".join(["tax"] * 30)], max_length=64)
    assert len(enc.windows[0]) == 32
