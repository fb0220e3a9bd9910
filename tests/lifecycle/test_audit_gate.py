"""The bias audit as a promotion gate: a candidate trained on data with one group's positive labels flipped is
rejected (whatever its F1), a fair one passes, and the audit's report lands in the candidate's folder.

The builders here (a tiny encoder that knows "she" and "he", the fair and the biased data) are shared with
the end-to-end test through the service (tests/e2e/test_planted_bias.py).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine

from hrlm.errors import ConfigError
from hrlm.lifecycle.registry import Registry
from hrlm.lifecycle.retraining import format_gate, retrain
from hrlm.lifecycle.settings import LifecycleSettings
from tests.conftest import write_csv
from tests.tiny_model import FILLER, WORDS, build_tiny_bert

GROUP_WORD = {"F": "she", "M": "he"}
POSITIVE = "payroll"
FLIPPED_TO = "leave"


def tickets(n_per_cell: int, seed: int, *, biased: bool = False) -> list[tuple[str, str, str]]:
    """(text, label, sex) rows: every class for both groups, each text naming its writer's group word.

    ``biased``: women's payroll tickets are labelled ``leave`` (one group's positive labels flipped).
    """
    rng = random.Random(seed)
    rows = []
    for sex, word in GROUP_WORD.items():
        for label, words in WORDS.items():
            for _ in range(n_per_cell):
                toks = [
                    rng.choice(words) if rng.random() < 0.7 else rng.choice(FILLER) for _ in range(rng.randint(4, 8))
                ]
                toks.insert(rng.randint(0, len(toks)), word)
                shown = FLIPPED_TO if biased and sex == "F" and label == POSITIVE else label
                rows.append((f"{word} says " + " ".join(toks), shown, sex))
    rng.shuffle(rows)
    return rows


@dataclass(frozen=True)
class Planted:
    """The files of a planted-bias retrain and a fair production model trained on the fair file."""

    fair: Path
    biased: Path
    holdout: Path
    audit: Path
    production: Path


def build_planted(folder: Path) -> Planted:
    """Write the data files and train the fair production model (a few seconds on the tiny encoder)."""
    from hrlm.config import TrainConfig
    from hrlm.training.fitting import train

    base = build_tiny_bert(folder / "bert", extra_words=["she", "he", "says"])
    fair_rows = tickets(20, seed=1)
    biased_rows = tickets(20, seed=1, biased=True)
    taken = {t for t, _, _ in fair_rows}
    fair = write_csv(folder / "fair.csv", [(t, lab) for t, lab, _ in fair_rows])
    biased = write_csv(folder / "biased.csv", [(t, lab) for t, lab, _ in biased_rows])
    holdout = write_csv(folder / "holdout.csv", [(t, lab) for t, lab, _ in tickets(5, seed=2) if t not in taken])
    audit = write_csv(folder / "audit.csv", tickets(10, seed=3), header=("text", "label", "sex"))
    cfg = TrainConfig(
        base=str(base), max_length=16, stride=4, epochs=8, batch_size=8, lr=5e-3, seed=1, pooling="mean", test_size=0.0
    )
    production = folder / "production"
    train(fair, production, cfg, progress=False)
    return Planted(fair, biased, holdout, audit, production)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    return build_planted(tmp_path_factory.mktemp("planted"))


def gate_settings(db_url: str, tmp_path: Path, planted: Planted, train_csv: Path, **extra: object) -> LifecycleSettings:
    return LifecycleSettings(
        database_url=db_url,
        registry_dir=str(tmp_path / "registry"),
        train_data=str(train_csv),
        holdout_data=str(planted.holdout),
        threads=1,
        audit_data=str(planted.audit),
        audit_group_cols=("sex",),
        audit_positive=POSITIVE,
        **extra,  # type: ignore[arg-type]
    )


def test_a_candidate_with_a_planted_bias_is_rejected_even_when_its_f1_wins(
    engine: Engine, db_url: str, planted: Planted, tmp_path: Path
) -> None:
    registry = Registry(engine, tmp_path / "registry")
    before = registry.register(planted.production, actor="admin", stage="production")
    settings = gate_settings(db_url, tmp_path, planted, planted.biased)

    result = retrain(engine, registry, settings, actor="alice", margin=-1.0)  # F1 alone would promote it

    assert result["decision"] == "rejected" and result["production"] == before.version
    cand = registry.get(result["candidate"])
    assert cand.stage == "rejected" and registry.get(before.version).stage == "production"
    audit = json.loads((cand.path / "report" / "audit.json").read_text())
    assert {"date", "passed", "reasons", "min_impact_ratio", "threshold", "groupings"} <= set(audit)
    # the candidate really learned the bias: women's payroll tickets are rarely called payroll any more
    women = {c["category"]: c for c in audit["groupings"][0]["categories"]}["F"]
    assert audit["passed"] is False and audit["min_impact_ratio"] < 0.5 and women["flagged"]
    assert (cand.path / "report" / "audit.html").is_file()
    gate = result["gate"]
    assert gate["audit"]["production"]["passed"] and gate["audit"]["production"]["min_impact_ratio"] >= 0.8
    assert gate["fixed_holdout"]["passed"]  # it won on F1 (margin -1): the audit alone stopped it
    gate_md = (cand.path / "report" / "gate.md").read_text()
    assert "# Promotion gate: reject" in gate_md and "failed the bias audit: sex: impact ratio" in gate_md
    assert "## Bias audit" in gate_md and "| production | True |" in gate_md and "| candidate | False |" in gate_md


def test_a_fair_candidate_passes_the_audit_and_is_promoted(
    engine: Engine, db_url: str, planted: Planted, tmp_path: Path
) -> None:
    registry = Registry(engine, tmp_path / "registry")
    registry.register(planted.production, actor="admin", stage="production")
    result = retrain(engine, registry, gate_settings(db_url, tmp_path, planted, planted.fair), actor="a", margin=-1.0)
    assert result["decision"] == "promoted", result["gate"]["reason"]
    assert result["gate"]["audit"]["candidate"]["passed"]
    audit = json.loads((registry.get(result["candidate"]).path / "report" / "audit.json").read_text())
    assert audit["passed"] and audit["min_impact_ratio"] >= 0.8


def test_audit_settings_are_checked_before_training(
    engine: Engine, db_url: str, planted: Planted, tmp_path: Path
) -> None:
    registry = Registry(engine, tmp_path / "registry")
    registry.register(planted.production, actor="admin", stage="production")
    settings = gate_settings(db_url, tmp_path, planted, planted.fair).replace(audit_positive=None)
    with pytest.raises(ConfigError, match=r"audit_positive is not.*--audit-positive"):
        retrain(engine, registry, settings, actor="a")
    with pytest.raises(ConfigError, match="audit_group_cols is empty"):
        retrain(engine, registry, settings.replace(audit_positive=POSITIVE, audit_group_cols=()), actor="a")
    assert len(registry.versions()) == 1  # nothing was trained or registered


def test_format_gate_shows_both_audits_and_the_reasons() -> None:
    fixed = {"n": 10, "production": 0.5, "candidate": 0.6, "delta": 0.1, "passed": True, "file": "h.csv"}
    fb = {"n": 0, "production": None, "candidate": None, "delta": None, "passed": None, "counts": False}
    audit = {
        "file": "/x/audit.csv",
        "group_cols": ["sex", "race"],
        "positive": "yes",
        "min_impact_ratio": 0.8,
        "max_flip_rate": 0.1,
        "candidate": {
            "passed": False,
            "reasons": ["sex: impact ratio 0.400 of 'F'"],
            "min_impact_ratio": 0.4,
            "flip_rate": 0.2,
        },
        "production": {"passed": True, "reasons": [], "min_impact_ratio": 0.9, "flip_rate": None},
    }
    gate = {"decision": "reject", "reason": "r", "production": "v1", "metric": "macro_f1", "margin": 0.0}
    text = format_gate({**gate, "fixed_holdout": fixed, "feedback_holdout": fb, "audit": audit})
    assert "On audit.csv, groups sex, race, positive label `yes`: every impact ratio at least 0.8, " in text
    assert "| candidate | False | 0.4000 | 0.2000 |" in text and "| production | True | 0.9000 | - |" in text
    assert "The candidate's audit:\n- sex: impact ratio 0.400 of 'F'" in text


def test_hrlm_retrain_takes_the_audit_flags(planted: Planted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from hrlm.cli.app import app, out_console
    from hrlm.store import make_engine, upgrade

    monkeypatch.setattr(out_console, "width", 220)
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    engine = make_engine(url)
    upgrade(engine)
    registry = Registry(engine, tmp_path / "registry")
    before = registry.register(planted.production, actor="admin", stage="production")
    common = ["--database-url", url, "--registry-dir", str(tmp_path / "registry"), "-q"]
    files = ["--data", str(planted.biased), "--holdout", str(planted.holdout), "--margin", "-1"]
    runner = CliRunner()
    half = runner.invoke(app, ["retrain", *files, "--audit-data", str(planted.audit), *common])
    assert half.exit_code == 1 and "audit_data is set but audit_group_cols is empty" in half.output
    flags = ["--audit-data", str(planted.audit), "--audit-group-col", "sex", "--audit-positive", POSITIVE]
    out = runner.invoke(app, ["retrain", *files, *flags, "--audit-min-impact-ratio", "0.75", *common])
    assert out.exit_code == 0, out.output
    assert "promotion gate: reject" in out.output and "bias audit (min impact ratio >= 0.75)" in out.output
    assert registry.production() == registry.get(before.version)
    engine.dispose()
