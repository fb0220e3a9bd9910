from __future__ import annotations

import pytest

from hrlm._progress import ProgressBar


def test_log_lines_every_five_percent_when_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    bar = ProgressBar(200, "predicting", unit="windows", fields={"loss": "-"})
    for _ in range(100):
        bar.update(advance=2, loss="0.5")
    bar.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert 20 <= len(lines) <= 21
    assert lines[-1].startswith("predicting 200/200 windows · loss 0.5")


def test_disabled_bar_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    bar = ProgressBar(10, "x", enabled=False)
    bar.update(10)
    bar.close()
    assert capsys.readouterr().err == ""
