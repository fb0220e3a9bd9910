"""`hrlm monitor` through Typer's CliRunner: the report's files, the table, and one-line errors."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from hrlm.cli import app
from hrlm.cli.monitor import parse_when
from hrlm.inference import Predictor
from hrlm.store import make_engine, upgrade
from hrlm.store.records import insert_predictions
from tests.conftest import make_texts, write_csv

runner = CliRunner()


def test_monitor_writes_json_html_and_png(trained_model: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    holdout = write_csv(tmp_path / "holdout.csv", make_texts(10, seed=4))
    url = f"sqlite:///{tmp_path / 'hrlm.db'}"
    engine = make_engine(url)
    upgrade(engine)
    texts = [t for t, _ in make_texts(10, seed=8)]
    preds = Predictor.from_dir(model, backend="torch-fp32", threads=1).predict(texts)
    start = dt.datetime(2026, 11, 2, 9, tzinfo=dt.UTC)
    insert_predictions(
        engine,
        [
            {
                "request_id": f"r{i}",
                "position": 0,
                "created_at": start + dt.timedelta(hours=i % 2 * 24),
                "model_version": "m",
                "text": text,
                "label": p.label,
                "confidence": p.score,
                "output": p.to_dict(),
                "latency_ms": 1.0,
                "batch_size": 1,
            }
            for i, (text, p) in enumerate(zip(texts, preds, strict=True))
        ],
    )
    engine.dispose()
    out = tmp_path / "report"
    args = ["monitor", "--since", "2026-11-02", "--until", "2026-11-04", "--model", str(model)]
    args += ["--reference", str(holdout), "--database-url", url, "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "no alerts" in result.output and "report.html" in result.output
    for name in ("monitor.json", "report.html", "volume.png", "drift.png", "quality.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "volume.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "monitor.json").read_text())
    assert [(w["label"], w["volume"]) for w in data["windows"]] == [("2026-11-02", 15), ("2026-11-03", 15)]
    assert data["reference"]["n"] == 30 and isinstance(data["alerts"], list)
    assert "<img" in (out / "report.html").read_text()


def test_monitor_rejects_a_bad_since_in_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["monitor", "--since", "last tuesday", "--database-url", f"sqlite:///{tmp_path}/x.db"])
    assert result.exit_code == 1
    assert "--since 'last tuesday'" in result.output and "Traceback" not in result.output


def test_monitor_without_a_production_version_says_what_to_do(tmp_path: Path) -> None:
    args = ["monitor", "--database-url", f"sqlite:///{tmp_path}/x.db", "--registry-dir", str(tmp_path / "reg")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "--model DIR" in result.output


def test_since_takes_spans_and_iso_dates() -> None:
    now = dt.datetime(2026, 12, 2, 12, tzinfo=dt.UTC)
    assert parse_when("7d", "--since", now=now) == now - dt.timedelta(days=7)
    assert parse_when("12h", "--since", now=now) == now - dt.timedelta(hours=12)
    assert parse_when("2w", "--since", now=now) == now - dt.timedelta(weeks=2)
    assert parse_when("2026-11-30", "--since") == dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
    assert parse_when("2026-11-30T08:00+01:00", "--since") == dt.datetime(2026, 11, 30, 7, tzinfo=dt.UTC)
