"""examples/quickstart.ipynb runs from top to bottom, on a tiny model, and shows what its reader is told to look at.

The notebook reads its sizes from ``HRLM_NOTEBOOK_*`` variables (its settings cell); here they point it at a
tiny BERT whose vocabulary holds the sample tickets' words (as CI's lean-install step builds one) and shrink
every run, so that the whole notebook executes quickly, on the CPU, in a fresh kernel of this interpreter.
The last test keeps docs/scaling.md, the notebook's companion, from naming options that do not exist."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.tiny_model import build_tiny_bert, frequent_words

ANSI = re.compile(r"\x1b\[[0-9;]*m")
NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "quickstart.ipynb"
SCALING = Path(__file__).resolve().parents[2] / "docs" / "scaling.md"
SAMPLE_TICKETS = Path(__file__).resolve().parents[2] / "src" / "hrlm" / "samples" / "helpdesk_tickets.csv"


def _text_of(cell: Any) -> str:
    """Everything a cell printed or displayed as text, without the colours of hrlm's output (ANSI codes)."""
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output.get("text", ""))
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
    return ANSI.sub("", "".join(parts))


def _images_of(cell: Any) -> list[str]:
    return [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]


def _cell_with(nb: Any, source: str) -> Any:
    matches = [c for c in nb.cells if c.cell_type == "code" and source in c.source]
    assert len(matches) == 1, f"expected one code cell containing {source!r}, found {len(matches)}"
    return matches[0]


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The notebook, executed once in a fresh kernel (the interpreter running the tests) in a temporary folder."""
    import nbclient  # the test extra brings nbclient, nbformat and ipykernel: missing, this fails rather than skips
    import nbformat

    base = build_tiny_bert(tmp_path_factory.mktemp("tiny-bert-samples"), frequent_words(SAMPLE_TICKETS))
    work = tmp_path_factory.mktemp("notebook")
    settings = {
        "HRLM_NOTEBOOK_BASE": str(base),
        "HRLM_NOTEBOOK_EPOCHS": "1",
        "HRLM_NOTEBOOK_MAX_LENGTH": "32",
        "HRLM_NOTEBOOK_TRIALS": "2",
        "HRLM_NOTEBOOK_TUNE_EPOCHS": "1",
        "HRLM_NOTEBOOK_DIR": str(work / "out"),
    }
    # Kernel "python3" is this interpreter: a spec of our own, first on JUPYTER_PATH, so that a user-level
    # python3 spec (~/.local/share/jupyter) pointing at another Python cannot take its place.
    kernels = tmp_path_factory.mktemp("jupyter")
    (kernels / "kernels" / "python3").mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"], "language": "python"}
    (kernels / "kernels" / "python3" / "kernel.json").write_text(json.dumps(spec | {"display_name": "Python 3"}))
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=240, resources={"metadata": {"path": str(work)}}
    )
    with pytest.MonkeyPatch.context() as env:  # the kernel inherits this environment
        env.setenv("JUPYTER_PATH", str(kernels))
        for name, value in settings.items():
            env.setenv(name, value)
        client.execute()
    assert nb.metadata.kernelspec.name == "python3"
    return nb


@pytest.mark.notebook
def test_every_cell_runs_without_error(executed: Any) -> None:
    code_cells = [c for c in executed.cells if c.cell_type == "code"]
    assert code_cells and all(c.get("execution_count") for c in code_cells)
    errors = [o for c in code_cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors


@pytest.mark.notebook
def test_the_install_cell_is_skipped_where_hrlm_is_importable(executed: Any) -> None:
    cell = _cell_with(executed, "%pip install")
    assert 'hrlm[ray,tune]"' in cell.source and _text_of(cell) == ""


@pytest.mark.notebook
def test_it_shows_the_machine_and_the_test_metrics(executed: Any) -> None:
    machine = _text_of(_cell_with(executed, "torch.cuda.is_available()"))
    assert "hrlm " in machine and ("GPU:" in machine or "CPU cores" in machine)
    trained = _text_of(_cell_with(executed, "hrlm.train("))
    assert "test split: accuracy" in trained and "macro F1" in trained and "on 48 tickets" in trained


@pytest.mark.notebook
def test_it_shows_the_report_pictures_inline(executed: Any) -> None:
    images = _images_of(_cell_with(executed, "confusion.png"))
    assert len(images) == 2 and all(len(png) > 1000 for png in images)


@pytest.mark.notebook
def test_it_predicts_a_team_for_each_new_ticket(executed: Any) -> None:
    table = _text_of(_cell_with(executed, "model.predict(texts)"))
    teams = {"onboarding", "it_access", "benefits", "learning", "employee_relations", "payroll", "offboarding", "leave"}
    rows = [line for line in table.splitlines()[1:] if line.strip()]
    assert len(rows) == 3 and all(any(team in row for team in teams) for row in rows)


@pytest.mark.notebook
def test_it_scores_the_incoming_tickets_with_hrlm_batch(executed: Any) -> None:
    text = _text_of(_cell_with(executed, 'hrlm_cli("batch"'))
    assert "$ hrlm batch " in text and "--engine local" in text
    assert "scored 40 rows of 1 shard(s)" in text  # the summary line of hrlm batch
    assert "40 tickets scored; columns: text, predicted_label, score, p_" in text


@pytest.mark.notebook
def test_it_runs_a_small_study_and_shows_the_best_trial(executed: Any) -> None:
    study = _text_of(_cell_with(executed, 'hrlm_cli("tune"'))
    assert "$ hrlm tune " in study and "--trials 2" in study
    assert re.search(r"trial +0 +complete", study) and re.search(r"trial +1 +(complete|pruned)", study)
    assert re.search(r"best trial \(\d\) +│ +0\.\d{4}", study)  # the table: the best trial's validation score
    shown = _cell_with(executed, "best.toml")
    best = _text_of(shown)
    assert re.search(r"best trial: number \d, validation macro F1 0\.\d{3}", best)
    assert "[train]" in best and "max_length = 32" in best  # the saved settings, the fixed ones as given
    assert len(_images_of(shown)) == 1  # the optimisation history


def test_every_hrlm_command_in_docs_scaling_uses_flags_that_exist() -> None:
    """docs/scaling.md cannot rot either: each `hrlm CMD ... --flag` it shows names an option of CMD."""
    import typer.main

    from hrlm.cli import app

    root = typer.main.get_command(app)
    text = SCALING.read_text(encoding="utf-8")
    lines = [" ".join(block.replace("\\\n", " ").split("\n")) for block in re.findall(r"```bash\n(.*?)```", text, re.S)]
    shown = re.findall(r"`(hrlm [^`]+)`", text) + re.findall(r"(hrlm [a-z]+ [^&;\n]*)", " ; ".join(lines))
    checked = set()
    for command in shown:
        name = command.split()[1]
        sub = root.commands.get(name)  # type: ignore[attr-defined]
        assert sub is not None, f"docs/scaling.md shows `hrlm {name}`, which is no command"
        options = {opt for param in sub.params for opt in (*param.opts, *param.secondary_opts)}
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", command):
            assert flag in options, f"docs/scaling.md: `hrlm {name}` has no option {flag}"
            checked.add((name, flag))
    assert {("batch", "--engine"), ("train", "--workers"), ("pretrain", "--workers"), ("tune", "--storage")} <= checked
