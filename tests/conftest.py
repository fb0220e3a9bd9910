"""Shared fixtures: a tiny random-weight BERT with a tiny WordPiece vocabulary, and small data files."""

from __future__ import annotations

import contextlib
import csv
import os
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

WORDS = {
    "payroll": ["salary", "payslip", "overtime", "tax", "paid", "wage", "bonus", "deposit"],
    "leave": ["vacation", "sick", "holiday", "absence", "parental", "days", "off", "leave"],
    "it": ["password", "laptop", "vpn", "login", "account", "locked", "email", "access"],
}
FILLER = ["my", "the", "is", "not", "please", "help", "with", "i", "need", "a", "for", "this", "month", "week"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_texts(n_per_class: int, seed: int = 0, length: tuple[int, int] = (4, 12)) -> list[tuple[str, str]]:
    """Separable toy tickets: each class draws most of its words from its own list."""
    rng = random.Random(seed)
    rows = []
    for label, words in WORDS.items():
        for _ in range(n_per_class):
            n = rng.randint(*length)
            toks = [rng.choice(words) if rng.random() < 0.6 else rng.choice(FILLER) for _ in range(n)]
            rows.append((" ".join(toks), label))
    rng.shuffle(rows)
    return rows


def write_csv(path: Path, rows: list[tuple[str, ...]], header: tuple[str, ...] = ("text", "label")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT of width 32 with random weights and a ~45-token WordPiece vocabulary."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = SPECIAL + sorted({w for ws in WORDS.values() for w in ws} | set(FILLER)) + ["##s", "##ed", "##ing"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab={tok: i for i, tok in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(0)
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


@pytest.fixture(scope="session")
def tickets_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 separable toy tickets over three classes."""
    folder = tmp_path_factory.mktemp("data")
    return write_csv(folder / "tickets.csv", make_texts(40))


@pytest.fixture(scope="session")
def trained_model(tiny_bert: Path, tickets_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained once per session on the toy tickets."""
    from hrlm.config import TrainConfig
    from hrlm.training.fitting import train

    out = tmp_path_factory.mktemp("models") / "tiny"
    # Mean pooling: a random-weight [CLS] + tanh pooler learns too slowly for a test.
    cfg = TrainConfig(
        base=str(tiny_bert), max_length=16, stride=4, epochs=5, batch_size=8, lr=3e-3, seed=1, pooling="mean"
    )
    train(tickets_csv, out, cfg, progress=False)
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder beside the project; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it sits beside the project in CI)")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Exported ONNX models go to a temporary cache, never to ~/.cache."""
    old = os.environ.get("HRLM_CACHE_DIR")
    os.environ["HRLM_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("HRLM_CACHE_DIR", None)
    else:
        os.environ["HRLM_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def compressed_model(trained_model: Path, tickets_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model through `compress --quantize int8 --onnx`, checked on the toy tickets."""
    from hrlm.training.compression import compress

    out = tmp_path_factory.mktemp("compressed") / "tiny-int8"
    compress(trained_model, out, quantize="int8", onnx=True, data=tickets_csv)
    return out


# --- databases: every test that stores runs on SQLite and, marked postgres, on PostgreSQL ----------------

PG_URL = os.environ.get("HRLM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_admin() -> Any:
    import psycopg

    try:
        return psycopg.connect(
            PG_URL.replace("postgresql+psycopg://", "postgresql://"), autocommit=True, connect_timeout=3
        )
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable ({str(exc).strip().splitlines()[0]}); CI runs these tests")


@contextlib.contextmanager
def pg_schema() -> Iterator[str]:
    """A URL whose connections live in a new schema of the test database, dropped afterwards."""
    schema = f"hrlm_test_{uuid.uuid4().hex[:12]}"
    conn = _pg_admin()
    conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated-nothing database URL: a SQLite file, or (marked postgres) a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hrlm.db'}"
    else:
        with pg_schema() as url:
            yield url
