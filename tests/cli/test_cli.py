from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from hrlm.cli import app
from tests.conftest import write_csv

runner = CliRunner()


def _ok(args: list[str], **kw: object) -> str:
    result = runner.invoke(app, args, **kw)  # type: ignore[arg-type]
    assert result.exit_code == 0, result.output
    return result.output


def _fails(args: list[str], code: int = 1) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


def test_train_evaluate_predict_round_trip(tiny_bert: Path, tickets_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    cfg = tmp_path / "run.toml"
    cfg.write_text("[train]\nmax_length = 16\nstride = 4\nbatch_size = 8\nlr = 0.003\npooling = 'mean'\n")
    text = _ok(
        [
            "train",
            str(tickets_csv),
            "--out",
            str(out),
            "--base",
            str(tiny_bert),
            "--config",
            str(cfg),
            "--epochs",
            "4",
            "--quiet",
        ]
    )
    assert "macro_f1" in text and (out / "report" / "report.html").exists()
    assert json.loads((out / "hrlm.json").read_text())["train_config"]["epochs"] == 4.0

    report = tmp_path / "eval"
    text = _ok(["evaluate", str(out), str(tickets_csv), "--out", str(report)])
    assert (report / "metrics.json").exists() and (report / "confusion.png").exists()

    preds = tmp_path / "preds.csv"
    _ok(["predict", str(out), str(tickets_csv), "--out", str(preds)])
    header = preds.read_text().splitlines()[0].split(",")
    assert header[:3] == ["text", "label", "predicted_label"]
    assert {"p_it", "p_leave", "p_payroll", "score"} <= set(header)

    gz = tmp_path / "preds.csv.gz"
    _ok(["predict", str(out), str(tickets_csv), "--out", str(gz)])
    assert len(pd.read_csv(gz)) == len(pd.read_csv(tickets_csv))

    jsonl = tmp_path / "preds.jsonl"
    _ok(["predict", str(out), str(tickets_csv), "--out", str(jsonl)])
    first = json.loads(jsonl.read_text().splitlines()[0])
    assert first["predicted_label"] in ("it", "leave", "payroll") and "label" in first

    stdout = _ok(["predict", str(out), "-"], input="vpn login locked\nmy salary is late\n")
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert [r["text"] for r in lines] == ["vpn login locked", "my salary is late"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "{missing}", "--out", "{tmp}/m"], "not found"),
        (["train", "{bad_col}", "--out", "{tmp}/m"], "columns are ['body', 'label']"),
        (["train", "{tickets}", "--out", "{tmp}/m", "--base", "bert-base-uncased"], "never downloads"),
        (["train", "{tickets}", "--out", "{tmp}/m", "--truncate", "head+tail", "--stride", "900"], "stride"),
        (["evaluate", "{tmp}/no-model", "{tickets}"], "not found"),
    ],
)
def test_user_errors_are_one_line_and_exit_1(args: list[str], message: str, tickets_csv: Path, tmp_path: Path) -> None:
    bad_col = write_csv(tmp_path / "bad.csv", [("a", "b")], header=("body", "label"))
    values = {"missing": tmp_path / "nope.csv", "bad_col": bad_col, "tickets": tickets_csv, "tmp": tmp_path}
    output = _fails([a.format(**values) for a in args])
    assert message in output


def test_unknown_label_at_evaluation(trained_model: Path, tmp_path: Path) -> None:
    data = write_csv(tmp_path / "new.csv", [("vpn locked", "it"), ("free lunch", "canteen")])
    assert "canteen" in _fails(["evaluate", str(trained_model), str(data)])


def test_bad_usage_exits_2() -> None:
    _fails(["train"], code=2)
    _fails(["frobnicate"], code=2)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--debug", "train", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "m")])
    assert result.exit_code != 0 and result.exception is not None


def test_version() -> None:
    assert "hrlm" in _ok(["--version"])


def test_every_setting_has_a_train_flag() -> None:
    import typer.main

    from hrlm.config import TrainConfig

    command = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    flags = {opt for p in command.params for opt in p.opts}
    renamed = {"early_stopping_patience": "--patience"}
    for key in TrainConfig.names():
        flag = renamed.get(key, "--" + key.replace("_", "-"))
        assert flag in flags, f"TrainConfig.{key} has no `hrlm train {flag}`"


def test_readme_documents_every_command() -> None:
    import typer.main

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    for name in typer.main.get_command(app).commands:  # type: ignore[attr-defined]
        assert f"hrlm {name}" in readme, f"`hrlm {name}` is not in the README"
