"""Shared fixtures: a tiny random-weight BERT with a tiny WordPiece vocabulary, small data files, databases.

Tests that need a service, a library or data beside the project (markers ``postgres``, ``redis``, ``ray``,
``data``) skip when it is missing, unless ``HRLM_REQUIRE_POSTGRES``, ``HRLM_REQUIRE_REDIS``, ``HRLM_REQUIRE_RAY``
or ``HRLM_REQUIRE_DATA`` is 1: then they fail, so that CI (.ci/run sets all four) cannot pass without running them.
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.tiny_model import FILLER, WORDS, build_tiny_bert

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def unavailable(need: str, reason: str) -> NoReturn:
    """Skip the test for want of ``need`` (postgres, redis, ray, data), or fail it where HRLM_REQUIRE_<NEED>=1."""
    variable = f"HRLM_REQUIRE_{need.upper()}"
    if os.environ.get(variable) == "1":
        pytest.fail(f"{reason}; {variable}=1 makes this a failure, not a skip", pytrace=False)
    pytest.skip(f"{reason}; CI runs these tests ({variable}=1)")


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
    """A 2-layer BERT of width 32 with random weights and a ~45-token WordPiece vocabulary (tests/tiny_model.py)."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def cuda() -> Any:
    """The CUDA GPU. CI has none, so these tests skip there; ``HRLM_REQUIRE_CUDA=1`` fails them instead."""
    import torch

    if not torch.cuda.is_available():
        if os.environ.get("HRLM_REQUIRE_CUDA") == "1":
            pytest.fail("no CUDA GPU is visible; HRLM_REQUIRE_CUDA=1 makes this a failure, not a skip", pytrace=False)
        pytest.skip("needs a CUDA GPU (run with HRLM_REQUIRE_CUDA=1 on a machine that has one)")
    return torch.device("cuda")


@pytest.fixture(scope="session")
def tickets_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 separable toy tickets over three classes."""
    folder = tmp_path_factory.mktemp("data")
    return write_csv(folder / "tickets.csv", make_texts(40))


def tiny_train_config(tiny_bert: Path, **overrides: Any) -> Any:
    """The settings that train the tiny BERT on the toy tickets to a working model, with ``overrides``."""
    from hrlm.config import TrainConfig

    # Mean pooling: a random-weight [CLS] + tanh pooler learns too slowly for a test.
    settings = {"max_length": 16, "stride": 4, "epochs": 5, "batch_size": 8, "lr": 3e-3, "seed": 1, "pooling": "mean"}
    return TrainConfig(base=str(tiny_bert), **{**settings, **overrides})


@pytest.fixture(scope="session")
def trained_model(tiny_bert: Path, tickets_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained once per session on the toy tickets."""
    from hrlm.training.fitting import train

    out = tmp_path_factory.mktemp("models") / "tiny"
    train(tickets_csv, out, tiny_train_config(tiny_bert), progress=False)
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder beside the project; tests that need it skip when it is absent (fail in CI)."""
    if not SHARED_DATA.is_dir():
        unavailable("data", f"real data folder {SHARED_DATA} is absent (it sits beside the project in CI)")
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


@pytest.fixture(scope="session")
def ray_local() -> Iterator[Any]:
    """A local Ray of 2 CPUs for the session: no dashboard, a small object store; shut down at the end.

    Skips when ray is not installed (the ray extra), or fails where HRLM_REQUIRE_RAY=1, as in CI.
    """
    try:
        import ray
    except ModuleNotFoundError:
        unavailable("ray", "ray is not installed (pip install 'hrlm[ray]')")
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=200 * 1024 * 1024,
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    ray.shutdown()


# --- databases: every test that stores runs on SQLite and, marked postgres, on PostgreSQL ----------------


def postgres_test_url() -> str:
    """HRLM_TEST_POSTGRES_URL, else HRLM_DATABASE_URL when it names PostgreSQL, else the local test database."""
    if url := os.environ.get("HRLM_TEST_POSTGRES_URL"):
        return url
    url = os.environ.get("HRLM_DATABASE_URL", "")
    if url.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        return url
    return "postgresql://postgres@127.0.0.1:5432/test"


PG_URL = postgres_test_url()


def _pg_admin() -> Any:
    import psycopg
    from sqlalchemy.engine import make_url

    url = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    # outside the except block, so that a failure is this one line, not the connection error's traceback too
    shown = make_url(PG_URL).render_as_string(hide_password=True)
    unavailable("postgres", f"PostgreSQL at {shown} is unreachable ({reason})")


@contextlib.contextmanager
def pg_schema() -> Iterator[str]:
    """A URL whose connections live in a new schema of the test database, dropped afterwards."""
    schema = f"hrlm_test_{uuid.uuid4().hex[:12]}"
    conn = _pg_admin()
    conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
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


@pytest.fixture
def engine(db_url: str) -> Iterator[Any]:
    """A migrated engine on ``db_url`` (SQLite, or a fresh PostgreSQL schema), disposed afterwards."""
    from hrlm.store import make_engine, upgrade

    eng = make_engine(db_url)
    upgrade(eng)
    yield eng
    eng.dispose()
