"""Two versions side by side on the holdout (hrlm.lifecycle.compare, `hrlm models compare`, the route)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import make_texts, write_csv


@pytest.fixture(scope="module")
def weaker(tiny_bert: Path, tickets_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another version of the tiny model: one short epoch, so it labels some texts differently."""
    from hrlm.config import TrainConfig
    from hrlm.training.fitting import train

    out = tmp_path_factory.mktemp("models") / "weaker"
    cfg = TrainConfig(
        base=str(tiny_bert), max_length=16, stride=4, epochs=0.3, batch_size=8, lr=3e-3, seed=2, pooling="mean"
    )
    train(tickets_csv, out, cfg, progress=False)
    return out


def test_compare_measures_both_and_lists_where_they_disagree(
    trained_model: Path, weaker: Path, db_url: str, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from hrlm.cli import app
    from hrlm.inference import Predictor
    from hrlm.lifecycle import Registry
    from hrlm.lifecycle.compare import compare_versions
    from hrlm.store import make_engine, upgrade

    holdout = write_csv(tmp_path / "holdout.csv", [*make_texts(10, seed=99), ("pension plan", "pensions")])
    engine = make_engine(db_url)
    try:
        upgrade(engine)
        registry = Registry(engine, tmp_path / "models")
        a = registry.register(trained_model, actor="test", stage="production").version
        b = registry.register(weaker, actor="test").version
        out = compare_versions(registry, a, b, holdout)
    finally:
        engine.dispose()
    assert out["n"] == 30 and out["dropped_unknown_labels"] == 1  # a label neither version knows
    texts = [t for t, label in make_texts(10, seed=99)]
    truth = [label for _, label in make_texts(10, seed=99)]
    pa = [p.label for p in Predictor.from_dir(trained_model).predict(texts)]
    pb = [p.label for p in Predictor.from_dir(weaker).predict(texts)]
    assert out["a"]["metrics"]["accuracy"] == pytest.approx(
        sum(x == y for x, y in zip(pa, truth, strict=True)) / 30, abs=1e-6
    )
    assert out["b"]["metrics"]["accuracy"] == pytest.approx(
        sum(x == y for x, y in zip(pb, truth, strict=True)) / 30, abs=1e-6
    )
    differ = [i for i in range(30) if pa[i] != pb[i]]
    assert out["disagreements_total"] == len(differ) > 0
    assert {r["text"] for r in out["disagreements"]} == {texts[i] for i in differ}
    assert out["a_right"] == sum(pa[i] == truth[i] for i in differ)
    assert out["delta"]["accuracy"] == pytest.approx(out["b"]["metrics"]["accuracy"] - out["a"]["metrics"]["accuracy"])
    assert set(out["per_class"]) == {"payroll", "leave", "it"}
    assert len(out["a"]["confusion_matrix"]["matrix"]) == 3

    result = CliRunner().invoke(
        app,
        ["models", "compare", a, b, "--holdout", str(holdout), "--json", str(tmp_path / "cmp.json"),
         "--database-url", db_url, "--registry-dir", str(tmp_path / "models")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert f"they disagree on {len(differ)} texts" in said
    assert json.loads((tmp_path / "cmp.json").read_text())["disagreements_total"] == len(differ)
    bad = CliRunner().invoke(app, ["models", "compare", a, "nope", "--holdout", str(holdout), "--database-url", db_url,
                                   "--registry-dir", str(tmp_path / "models")])  # fmt: skip
    assert bad.exit_code == 1 and "nope" in bad.output
