"""run_audit, its published-summary fields and verdict, the report files, its errors, and `hrlm audit`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from hrlm.cli import app
from hrlm.cli.audit import AUDIT_FAILED_EXIT as CLI_EXIT
from hrlm.errors import ConfigError, DataError
from hrlm.fairness import AUDIT_FAILED_EXIT, run_audit, write_audit_report
from tests.conftest import make_texts, write_csv
from tests.fairness.test_counterfactual import SheStub


def applicants() -> pd.DataFrame:
    """40 texts: women are selected (the stub says yes to "she") 10 of 20 times, men 2 of 20, 1 unknown."""
    rows = []
    for i in range(20):
        rows.append({"text": f"she applied {i}" if i < 10 else f"applied {i}", "sex": "F", "label": "yes"})
        rows.append({"text": f"she applied again {i}" if i < 2 else f"applied again {i}", "sex": "M", "label": "no"})
    rows.append({"text": "applied late", "sex": "", "label": "no"})
    return pd.DataFrame(rows)


def test_run_audit_on_a_table_holds_the_published_summary_fields() -> None:
    result = run_audit(
        SheStub(),
        applicants(),
        group_cols=["sex"],
        positive="yes",
        label_col="label",
        data_source="2025 applicants",
        explanation="every application of 2025",
        distribution_date="2026-01-15",
    )
    data = result.to_dict()
    assert data["date"] == result.date and re.fullmatch(r"\d{4}-\d{2}-\d{2}", data["date"])
    assert (data["data_source"], data["explanation"], data["distribution_date"]) == (
        "2025 applicants",
        "every application of 2025",
        "2026-01-15",
    )
    [sex] = data["groupings"]
    cats = {c["category"]: c for c in sex["categories"]}
    assert (cats["F"]["count"], cats["M"]["count"], sex["unknown"]) == (20, 20, 1)
    assert (cats["F"]["selection_rate"], cats["M"]["selection_rate"]) == (0.5, 0.1)
    assert cats["M"]["impact_ratio"] == pytest.approx(0.2) and cats["M"]["flagged"]
    assert result.min_impact_ratio == pytest.approx(0.2)
    assert (cats["F"]["accuracy"], cats["M"]["accuracy"]) == (0.5, 0.9)  # true: F all yes, M all no
    assert data["passed"] is False and data["threshold"] == 0.8
    assert data["reasons"] == [
        "sex: impact ratio 0.200 of 'M' (selection rate 0.100 vs 0.500 of 'F') is under 0.8 (four-fifths rule)"
    ]
    assert data["overall"]["selection_rate"] == pytest.approx(12 / 41, abs=1e-6)
    assert data["counterfactual"]["swapped"] == 12 and data["counterfactual"]["flip_rate"] == 1.0
    json.dumps(data)  # JSON-ready


def test_passed_takes_other_thresholds_and_the_flip_rate() -> None:
    result = run_audit(SheStub(), applicants(), group_cols=["sex"], positive="yes")
    assert result.passed(0.2) == (True, [])
    ok, reasons = result.passed(0.2, max_flip_rate=0.5)
    assert not ok and reasons == [
        "counterfactual flip rate 1.000 (12 of 12 texts with gendered words swapped changed label) is above 0.5"
    ]
    quiet = run_audit(SheStub(), applicants(), group_cols=["sex"], positive="yes", counterfactual=False)
    assert quiet.counterfactual is None
    assert quiet.passed(0.2, max_flip_rate=0.5)[1] == [
        "the counterfactual probe did not run, so its flip rate (max 0.5) is unknown"
    ]


def test_report_files_hold_the_tables_and_the_flags(tmp_path: Path) -> None:
    result = run_audit(SheStub(), applicants(), group_cols=["sex"], positive="yes")
    paths = write_audit_report(result, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert {"date", "passed", "reasons", "min_impact_ratio", "threshold", "groupings"} <= set(data)
    page = paths["html"].read_text()
    assert '<tr class="flagged"><td class="text">M</td>' in page and "The audit failed" in page
    assert "Counterfactual probe" in page and "he applied 0" in page


def test_errors_name_the_flag(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"column 'race' not found .* Pass --group-col"):
        run_audit(SheStub(), applicants(), group_cols=["race"], positive="yes")
    with pytest.raises(
        ConfigError, match=r"--positive 'hire' is not a label of the model; its labels are \['no', 'yes'\]"
    ):
        run_audit(SheStub(), applicants(), group_cols=["sex"], positive="hire")
    with pytest.raises(DataError, match=r"column 'body' not found .* Pass --text-col"):
        run_audit(SheStub(), applicants(), group_cols=["sex"], positive="yes", text_col="body")
    empty = tmp_path / "empty.csv"
    empty.write_text("text,sex\n")
    with pytest.raises(DataError, match="no data rows"):
        run_audit(SheStub(), empty, group_cols=["sex"], positive="yes")
    with pytest.raises(ConfigError, match="--group-col"):
        run_audit(SheStub(), applicants(), group_cols=[], positive="yes")


# -- hrlm audit --------------------------------------------------------------------------------------


def audit_csv(folder: Path, fair: bool) -> Path:
    """Toy tickets with a group column: the same texts for both groups (fair), or payroll for one group only."""
    rows = make_texts(6, seed=5)
    if fair:
        data = [(t, "a", lab) for t, lab in rows] + [(t, "b", lab) for t, lab in rows]
    else:
        data = [(t, "a" if lab == "payroll" else "b", lab) for t, lab in rows]
    return write_csv(folder / f"audit-{fair}.csv", data, header=("text", "team", "label"))


def test_cli_writes_the_report_and_exits_0_when_the_audit_passes(trained_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    args = ["audit", str(trained_model), str(audit_csv(tmp_path, True)), "--group-col", "team"]
    result = CliRunner().invoke(app, [*args, "--positive", "payroll", "--out", str(out), "--label-col", "label"])
    assert result.exit_code == 0, result.output
    assert "audit passed" in result.output and "counterfactual probe" in result.output
    data = json.loads((out / "audit.json").read_text())
    assert data["passed"] and data["min_impact_ratio"] == 1.0 and (out / "audit.html").is_file()


def test_cli_exits_with_its_own_status_when_the_audit_fails(trained_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    args = ["audit", str(trained_model), str(audit_csv(tmp_path, False)), "--group-col", "team", "--positive"]
    result = CliRunner().invoke(app, [*args, "payroll", "--out", str(out), "--no-counterfactual"])
    assert result.exit_code == AUDIT_FAILED_EXIT == CLI_EXIT == 3, result.output
    assert "audit failed" in result.output and "four-fifths" in result.output
    data = json.loads((out / "audit.json").read_text())
    assert not data["passed"] and data["min_impact_ratio"] < 0.8 and data["counterfactual"] is None
    assert f"Exit status 0: passed; {CLI_EXIT}" in " ".join(CliRunner().invoke(app, ["audit", "--help"]).output.split())


def test_cli_error_is_one_line_with_status_1(trained_model: Path, tmp_path: Path) -> None:
    args = ["audit", str(trained_model), str(audit_csv(tmp_path, True)), "--group-col", "team", "--positive", "hire"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "--positive 'hire' is not a label of the model" in result.output


def test_nobody_selected_passes_with_a_note_and_bad_limits_are_refused() -> None:
    rows = pd.DataFrame({"text": ["applied once", "applied twice"], "sex": ["F", "M"]})
    result = run_audit(SheStub(), rows, group_cols=["sex"], positive="yes", counterfactual=False)
    assert result.min_impact_ratio is None and result.passed() == (True, [])
    assert result.notes == ["sex: no compared category had a text selected, so no impact ratio can be computed"]
    with pytest.raises(ConfigError, match="--max-flip-rate 2 must be between 0 and 1"):
        run_audit(SheStub(), rows, group_cols=["sex"], positive="yes", max_flip_rate=2)
    with pytest.raises(ConfigError, match="--min-impact-ratio 0 must be above 0"):
        run_audit(SheStub(), rows, group_cols=["sex"], positive="yes", threshold=0)
