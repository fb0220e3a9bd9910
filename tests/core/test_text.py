from __future__ import annotations

import html
import itertools
import random
import re
import sys
import unicodedata
from pathlib import Path

import pytest

from hrlm.encoders import load_tokenizer
from hrlm.errors import DataError
from hrlm.text import (
    check_storable,
    check_visible,
    encode_documents,
    has_visible,
    head_tail,
    normalize,
    window_spans,
)


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


@pytest.mark.parametrize(
    ("value", "what", "position"),
    [
        ("VPN \x00 login", r"a NUL character \(U\+0000\)", 4),
        ("\ud800", r"a lone surrogate \(U\+D800", 0),
        ("ok \udfff", r"a lone surrogate \(U\+DFFF", 3),
    ],
)
def test_characters_no_database_stores_are_refused_naming_field_and_position(
    value: str, what: str, position: int
) -> None:
    with pytest.raises(
        DataError, match=rf"^note holds {what}.* at position {position}, which cannot be stored; "
    ) as err:
        check_storable("note", value)
    assert err.value.status == 422
    assert value not in str(err.value)  # never echoed: the message must itself be storable and printable


@pytest.mark.parametrize("value", ["", "VPN login", "caf\u00e9 \U0001f600 \u65e5\u672c", "tab\tand\nnewline", "\x01"])
def test_everything_else_is_storable(value: str) -> None:
    assert check_storable("text", value) is value
    value.encode("utf-8")  # what a database needs


@pytest.mark.parametrize("value", ["", " ", "\t\n\r", "\x00\x00", "\x01\x7f", "\u200b\ufeff", "\u00a0\u3000", "\u2028"])
def test_texts_without_a_visible_character(value: str) -> None:
    assert not has_visible(value)
    why = r"^text (is empty|has only white space and control characters): there is nothing to classify"
    with pytest.raises(DataError, match=why):
        check_visible("text", value)


@pytest.mark.parametrize("value", ["a", " . ", "\x00x", "\u65e5", "\U0001f600", "-"])
def test_texts_with_a_visible_character(value: str) -> None:
    assert has_visible(value) and check_visible("text", value) == value


def _normalize_by_regex(text: str) -> str:
    """The plain definition that :func:`hrlm.text.normalize` computes with fewer passes over the text."""
    text = re.sub(r"<\s*br\s*/?\s*>", " ", text, flags=re.IGNORECASE)
    text = unicodedata.normalize("NFC", html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


def test_normalize_equals_its_plain_definition_on_every_white_space_character() -> None:
    spaces = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()]
    assert len(spaces) > 20  # tab, new line, no-break, ideographic and the other Unicode spaces
    rng = random.Random(0)
    pieces = [*spaces, "a", "B", "é", "e\u0301", "&amp;", "&nbsp;", "&#x20;", "<br>", "< BR />", "<b>", "<", "&", "x"]
    texts = [
        "",
        " ",
        "\u3000",
        "plain ascii",
        *("".join(rng.choices(pieces, k=rng.randint(1, 30))) for _ in range(3000)),
    ]
    for text in texts:
        assert normalize(text) == _normalize_by_regex(text), repr(text)
