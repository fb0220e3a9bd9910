from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from hrlm.cli import app
from hrlm.inference import calibrate
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


def test_freeze_encoder_on_few_labels_fits_the_head_and_says_why(tiny_bert: Path, tmp_path: Path) -> None:
    from tests.conftest import make_texts

    few = write_csv(tmp_path / "few.csv", make_texts(6))  # 6 texts per class: auto would pick SetFit
    base = ["train", str(few), "--base", str(tiny_bert), "--max-length", "16", "--epochs", "1", "--quiet"]
    text = _ok([*base, "--out", str(tmp_path / "m"), "--freeze-encoder"])
    assert "note: --method auto chose fine-tuning of the head" in " ".join(text.split())
    assert json.loads((tmp_path / "m" / "hrlm.json").read_text())["extra"]["method"] == "finetune"
    refused = _fails([*base, "--out", str(tmp_path / "s"), "--freeze-encoder", "--method", "setfit"])
    assert len(refused.strip().splitlines()) == 1 and "'setfit' trains the encoder" in " ".join(refused.split())
    assert not (tmp_path / "s").exists()


def test_setfit_shows_its_progress(tiny_bert: Path, tmp_path: Path) -> None:
    from tests.conftest import make_texts

    few = write_csv(tmp_path / "few.csv", make_texts(4))
    args = ["train", str(few), "--base", str(tiny_bert), "--max-length", "16", "--epochs", "1"]
    text = _ok([*args, "--out", str(tmp_path / "m"), "--setfit-pairs", "2", "--method", "setfit"])
    assert "contrastive pairs 1/" in text  # the bar's line every 5% when stderr is not a terminal


def test_evaluate_refuses_a_non_empty_out_folder_without_overwrite(trained_model: Path, tmp_path: Path) -> None:
    data = write_csv(tmp_path / "eval.csv", [("vpn login locked", "it"), ("my salary is late", "payroll")])
    report = tmp_path / "report"
    report.mkdir()
    (report / "notes.txt").write_text("mine")
    refused = _fails(["evaluate", str(trained_model), str(data), "--out", str(report)])
    assert len(refused.strip().splitlines()) == 1 and "--overwrite" in refused
    assert [p.name for p in report.iterdir()] == ["notes.txt"]
    _ok(["evaluate", str(trained_model), str(data), "--out", str(report), "--overwrite"])
    assert (report / "metrics.json").exists() and not (report / "notes.txt").exists()  # replaced, not mixed
    empty = tmp_path / "empty"
    empty.mkdir()
    _ok(["evaluate", str(trained_model), str(data), "--out", str(empty)])
    assert (empty / "report.html").exists()


@pytest.mark.parametrize("command", ["train", "pretrain", "distill", "compress"])
def test_every_command_that_writes_a_model_folder_refuses_an_existing_one(
    command: str, trained_model: Path, tickets_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    args = {
        "train": ["train", str(tickets_csv)],
        "pretrain": ["pretrain", str(tickets_csv)],
        "distill": ["distill", str(trained_model), "--data", str(tickets_csv)],
        "compress": ["compress", str(trained_model), "--prune", "0.1"],
    }[command]
    refused = _fails([*args, "--out", str(out)])
    assert len(refused.strip().splitlines()) == 1 and "--overwrite" in refused
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_compress_with_overwrite_replaces_the_folder(trained_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "small"
    out.mkdir()
    (out / "mine.txt").write_text("old")
    _ok(["compress", str(trained_model), "--prune", "0.1", "--out", str(out), "--overwrite", "--quiet"])
    assert (out / "hrlm.json").exists() and not (out / "mine.txt").exists()
    assert "model folder itself" in _fails(["compress", str(out), "--prune", "0.1", "--out", str(out), "--overwrite"])


def test_demo_writes_only_into_a_new_empty_or_demo_folder(tmp_path: Path) -> None:
    from hrlm.cli.demo import DEMO_MARKER, claim_folder
    from hrlm.errors import ConfigError

    claim_folder(tmp_path / "new")
    assert (tmp_path / "new" / DEMO_MARKER).is_file()
    claim_folder(tmp_path / "new")  # a previous demo's folder
    legacy = tmp_path / "legacy"  # a demo's folder from before the marker
    (legacy / "models").mkdir(parents=True)
    (legacy / "train.csv").write_text("text,label\n")
    claim_folder(legacy)
    users = tmp_path / "users"
    users.mkdir()
    (users / "payroll.xlsx").write_text("x")
    with pytest.raises(ConfigError, match="not empty; choose another --out or pass --overwrite"):
        claim_folder(users)
    assert not (users / DEMO_MARKER).exists()
    claim_folder(users, overwrite=True)
    assert (users / "payroll.xlsx").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "cv.pdf").write_text("x")
    refused = _fails(["demo", "--out", str(other), "--no-serve"])
    assert len(refused.strip().splitlines()) == 1 and "--overwrite" in refused
    assert [p.name for p in other.iterdir()] == ["cv.pdf"]


def test_db_upgrade_says_the_sqlite_folder_is_missing_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent" / "dir"
    refused = _fails(["db", "upgrade", "--database-url", f"sqlite:///{missing / 'x.db'}"])
    assert len(refused.strip().splitlines()) == 1
    assert f"the folder {missing} of database_url" in " ".join(refused.split()) and "does not exist" in refused
    assert not (tmp_path / "nonexistent").exists()


def test_predict_refuses_an_unknown_output_extension_before_predicting(trained_model: Path, tmp_path: Path) -> None:
    data = write_csv(tmp_path / "in.csv", [("vpn login locked", "it")])
    refused = _fails(["predict", str(trained_model), str(data), "--out", str(tmp_path / "preds.xlsx")])
    assert "--out preds.xlsx: unknown file type" in refused and ".csv, .csv.gz, .jsonl, .jsonl.gz" in refused
    assert "backend:" not in refused  # refused before the model was loaded
    assert not (tmp_path / "preds.xlsx").exists()
    _ok(["predict", str(trained_model), str(data), "--out", str(tmp_path / "preds.NDJSON")])
    assert json.loads((tmp_path / "preds.NDJSON").read_text())["predicted_label"] in ("it", "leave", "payroll")


def test_calibrate_measures_caches_and_names_a_missing_column(
    trained_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HRLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(calibrate, "NOISE_LIMIT", math.inf)  # whatever else runs beside the tests: cached
    result = runner.invoke(app, ["calibrate", str(trained_model), "--backend", "torch-fp32"])
    assert result.exit_code == 0, result.output
    assert "chosen for windows of up to about" in result.output and "packed@" in result.output
    assert "rounds of one choice differed by" in result.output and "(cached)" in result.output
    cached = list((tmp_path / "cache" / "calibration").glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["buckets"]
    write_csv(tmp_path / "d.csv", [("payslip wrong", "pay")])
    bad = runner.invoke(app, ["calibrate", str(trained_model), str(tmp_path / "d.csv"), "--text-col", "body"])
    assert bad.exit_code == 1 and "--text-col" in bad.output
