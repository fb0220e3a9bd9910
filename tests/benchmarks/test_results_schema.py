"""Every file of benchmarks/results/ against benchmarks/results.schema.json, and the writer of those files.

The schema is checked on broken documents too, so that a schema which accepts anything fails here.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from jsonschema import Draft202012Validator

PROJECT = Path(__file__).resolve().parents[2]
BENCHMARKS = PROJECT / "benchmarks"
RESULTS = BENCHMARKS / "results"
SCHEMA = json.loads((BENCHMARKS / "results.schema.json").read_text(encoding="utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA)
RESULT_FILES = sorted(RESULTS.glob("*.json"))
# An absolute path of one machine; "<local>/tmp-x", "../shared/x" and "benchmarks/work" are not.
MACHINE_PATH = re.compile(r"(?<![\w.~>-])/(?:tmp|work|root|home)(?:/|\b)")
# Written before issue 13 by their scripts, with the machine paths of the command line as run. They stay as
# written until they are rerun (a results file is only written by its script); the xfail is strict, so a rerun
# that removes the paths fails here until its name leaves this list.
WRITTEN_WITH_MACHINE_PATHS = {
    "accuracy-imdb.json",
    "accuracy-onet_tasks.json",
    "fewshot-onet_tasks.json",
    "service_load-helpdesk_tickets.json",
    "service_load-imdb.json",
}


def errors_of(doc: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}"
        for e in sorted(VALIDATOR.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(SCHEMA)


def test_there_are_results_files_to_check() -> None:
    assert len(RESULT_FILES) >= 10


@pytest.mark.parametrize("path", RESULT_FILES, ids=lambda p: p.name)
def test_results_file_matches_the_schema(path: Path) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert errors_of(doc) == []
    assert path.name.startswith(f"{doc['benchmark']}-{doc['dataset']}")


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(
            p,
            marks=pytest.mark.xfail(strict=True, reason="written before issue 13; rerun to remove the paths"),
        )
        if p.name in WRITTEN_WITH_MACHINE_PATHS
        else p
        for p in RESULT_FILES
    ],
    ids=lambda p: p.name,
)
def test_results_file_names_no_absolute_machine_path(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert [m.group(0) for m in MACHINE_PATH.finditer(text)] == []


def test_the_list_of_files_with_machine_paths_names_only_existing_files() -> None:
    assert {p.name for p in RESULT_FILES} >= WRITTEN_WITH_MACHINE_PATHS


# ---------------------------------------------------------------------------------------------------------
# The schema rejects broken documents


def version_2_doc() -> dict[str, Any]:
    """The smallest file write_result could write."""
    return {
        "schema_version": 2,
        "benchmark": "accuracy",
        "dataset": "imdb",
        "split": "official test 25000",
        "command": "python benchmarks/accuracy.py --data ../shared/data/imdb --note 'a note'",
        "argv": ["benchmarks/accuracy.py", "--data", "../shared/data/imdb", "--note", "a note"],
        "notes": ["a note"],
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "git_dirty": False,
        "date": "2026-12-01T10:00:00Z",
        "versions": {"python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "5.24.0", "hrlm": "0.1.0"},
        "machine": {
            "cpu": "AMD EPYC",
            "cores": 2,
            "cpu_bf16": True,
            "gpu": None,
            "matmul_gflops": {
                "size": 2048,
                "repeats": 5,
                "statistic": "median",
                "threads": 2,
                "fp32": 171.3,
                "bf16": 903.1,
                "gpu": None,
            },
        },
        "rows": [{"system": "tfidf", "accuracy": 0.9, "macro_f1": 0.9}],
    }


def version_1_doc() -> dict[str, Any]:
    doc = version_2_doc()
    for key in ("schema_version", "argv", "notes", "git_dirty", "versions"):
        del doc[key]
    doc["git_commit"] = "0a1b5d3"
    doc["machine"] = {"cpu": "AMD EPYC", "cores": 2, "cpu_bf16": False, "gpu": None, "torch": "2.13.0", "python": "3"}
    return doc


def test_the_smallest_documents_of_each_version_are_valid() -> None:
    assert errors_of(version_2_doc()) == []
    assert errors_of(version_1_doc()) == []


def without(key: str) -> Any:
    return lambda doc: doc.pop(key)


def setting(path: str, value: Any) -> Any:
    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[last] = value

    return change


BROKEN_VERSION_2 = {
    "no rows": without("rows"),
    "empty rows": setting("rows", []),
    "a row naming no system": setting("rows", [{"accuracy": 0.9}]),
    "an accuracy above 1": setting("rows.0.accuracy", 90.4),
    "no git_dirty": without("git_dirty"),
    "git_dirty not a boolean": setting("git_dirty", "yes"),
    "no versions": without("versions"),
    "no transformers version": lambda doc: doc["versions"].pop("transformers"),
    "no argv": without("argv"),
    "no notes": without("notes"),
    "a note that is not text": setting("notes", [3]),
    "no measured matrix-product rates": lambda doc: doc["machine"].pop("matmul_gflops"),
    "no fp32 rate": lambda doc: doc["machine"]["matmul_gflops"].pop("fp32"),
    "a zero rate": setting("machine.matmul_gflops.fp32", 0),
    "torch under machine as before version 2": setting("machine.torch", "2.13.0"),
    "a command that is not a benchmark script": setting("command", "hrlm evaluate MODEL data.csv"),
    "argv not starting at the script": setting("argv", ["/tmp/x/benchmarks/accuracy.py"]),
    "schema_version 3": setting("schema_version", 3),
    "a git commit that is not a hash": setting("git_commit", "HEAD"),
    "a date without time zone": setting("date", "2026-12-01 10:00:00"),
    "an unknown benchmark": setting("benchmark", "speed"),
    "an unknown top-level key": setting("comment", "looks fine"),
    "an unknown machine key": setting("machine.ram_gb", 64),
    "ran_as in a version 2 file, even with a hand-edit note": lambda doc: doc.update(
        ran_as="python benchmarks/accuracy.py", edited_by_hand={"what": "command", "why": "a GPU run"}
    ),
    "an empty hand-edit note": setting("edited_by_hand", {}),
    "a hand-edit note without why": setting("edited_by_hand", {"what": "rows[0]"}),
    "a merged file's source without its commit": setting("sources", [{"file": "a.json", "command": "python x"}]),
    "cpu_rows without cpu_speed": setting("cpu_rows", [{"system": "teacher", "docs_per_s": 3.6}]),
}

BROKEN_VERSION_1 = {
    "no rows": without("rows"),
    "no machine": without("machine"),
    "no command": without("command"),
    "a machine without the torch version": lambda doc: doc["machine"].pop("torch"),
    "argv without schema_version": setting("argv", ["benchmarks/accuracy.py"]),
    "git_dirty without schema_version": setting("git_dirty", False),
    "ran_as without a hand-edit note": setting("ran_as", "python benchmarks/adaptation.py --data x"),
    "a short hand-edit note": setting("edited_by_hand", "fixed"),
}


@pytest.mark.parametrize("change", BROKEN_VERSION_2.values(), ids=BROKEN_VERSION_2.keys())
def test_the_schema_rejects_a_broken_version_2_file(change: Any) -> None:
    doc = copy.deepcopy(version_2_doc())
    change(doc)
    assert errors_of(doc) != []


@pytest.mark.parametrize("change", BROKEN_VERSION_1.values(), ids=BROKEN_VERSION_1.keys())
def test_the_schema_rejects_a_broken_file_from_before_version_2(change: Any) -> None:
    doc = copy.deepcopy(version_1_doc())
    change(doc)
    assert errors_of(doc) != []


def test_a_hand_edited_file_from_before_version_2_may_keep_ran_as() -> None:
    doc = version_1_doc()
    doc["ran_as"] = "python benchmarks/adaptation.py --data '<data folder>/imdb'"
    doc["edited_by_hand"] = {"what": ["command rewritten"], "why": "the run needs a GPU"}
    assert errors_of(doc) == []


# ---------------------------------------------------------------------------------------------------------
# The writer: benchmarks/_common.py


@pytest.fixture
def common(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """benchmarks/_common, with matrix products small enough for a test."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module("_common")
    monkeypatch.setattr(module, "MATMUL_SIZE", 128)
    monkeypatch.setattr(module, "MATMUL_REPEATS", 2)
    module._machine_rates.cache_clear()
    yield module
    module._machine_rates.cache_clear()


def test_write_result_records_the_run_with_project_paths_relative(
    common: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hrlm

    monkeypatch.chdir(BENCHMARKS)  # run from another folder than the project root
    monkeypatch.setattr(
        sys,
        "argv",
        [
            str(BENCHMARKS / "accuracy.py"),  # the script, absolute
            "--data",
            str(PROJECT.parent / "shared" / "data" / "imdb"),  # ../shared data, absolute
            "--base=../src/hrlm",  # a project path relative to the working folder, as --option=value
            "--keep-model",
            str(tmp_path / "model"),  # a folder of this machine only
            "--note",
            "two words",
            "--lr",
            "1e-4",
        ],
    )
    payload = {
        "benchmark": "accuracy",
        "dataset": "imdb",
        "split": "a test split",
        "rows": [{"system": "tfidf", "accuracy": 0.5}],
        "settings": {"model": str(tmp_path / "model"), "data": "../shared/data/imdb"},
        "notes": ["from the script"],
    }

    path = common.write_result("accuracy-imdb-test", payload, notes=["two words"], results_dir=tmp_path, threads=1)

    assert path == tmp_path / "accuracy-imdb-test.json"
    text = path.read_text(encoding="utf-8")
    doc = json.loads(text)
    assert errors_of(doc) == []
    assert doc["schema_version"] == 2
    assert doc["argv"] == [
        "benchmarks/accuracy.py",
        "--data",
        "../shared/data/imdb",
        "--base=src/hrlm",
        "--keep-model",
        "<local>/model",
        "--note",
        "two words",
        "--lr",
        "1e-4",
    ]
    assert shlex.split(doc["command"]) == ["python", *doc["argv"]]
    assert doc["notes"] == ["from the script", "two words"]
    assert doc["settings"] == {"model": "<local>/model", "data": "../shared/data/imdb"}
    assert MACHINE_PATH.search(text) is None
    assert payload["notes"] == ["from the script"]  # the caller's payload is left as it was
    if doc["git_commit"] is not None:  # a git checkout
        assert re.fullmatch("[0-9a-f]{40}", doc["git_commit"])
        assert isinstance(doc["git_dirty"], bool)
    assert doc["versions"]["hrlm"] == hrlm.__version__
    assert set(doc["versions"]) == {"python", "torch", "transformers", "hrlm"}
    rates = doc["machine"]["matmul_gflops"]
    assert (rates["size"], rates["repeats"], rates["threads"]) == (128, 2, 1)
    assert rates["fp32"] > 0
    # bf16 is measured only where the CPU multiplies it natively: elsewhere torch emulates it (null)
    from hrlm.inference import cpu_has_fast_bf16

    assert (rates["bf16"] is not None) == cpu_has_fast_bf16()
    assert set(doc["machine"]["flags"]) <= {
        "avx2",
        "avx512f",
        "avx512_bf16",
        "avx512_vnni",
        "amx_bf16",
        "amx_int8",
        "amx_tile",
        "fma",
    }


def test_the_ceiling_is_the_fastest_native_precision(common: ModuleType) -> None:
    assert common.ceiling({"fp32": 200.0, "bf16": 850.0}) == ("bf16", 850.0)
    assert common.ceiling({"fp32": 110.0, "bf16": None}) == ("fp32", 110.0)  # an AVX2 CPU: bf16 not measured
    assert common.ceiling({"fp32": 300.0, "bf16": 250.0}) == ("fp32", 300.0)
    assert common.ceiling({"fp32": None, "bf16": None}) == ("fp32", None)


def test_write_result_refuses_a_payload_that_would_replace_the_record(common: ModuleType, tmp_path: Path) -> None:
    payload = {"benchmark": "accuracy", "dataset": "imdb", "split": "s", "rows": [{"system": "x"}], "command": "c"}
    with pytest.raises(ValueError, match="command"):
        common.write_result("accuracy-imdb", payload, results_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_portable_path_keeps_project_and_shared_paths_and_hides_others(common: ModuleType) -> None:
    assert common.portable_path(PROJECT / "runs" / "imdb") == "runs/imdb"
    assert common.portable_path(PROJECT.parent / "shared" / "data" / "onet_tasks") == "../shared/data/onet_tasks"
    assert common.portable_path("/tmp/hrlm-imdb-model") == "<local>/hrlm-imdb-model"
    assert common.portable_path("runs/imdb", cwd=PROJECT) == "runs/imdb"
    assert (
        common.portable_command("python benchmarks/x.py --model /tmp/m") == "python benchmarks/x.py --model '<local>/m'"
    )
    assert common.portable_command("hrlm evaluate /tmp/m") == "hrlm evaluate /tmp/m"  # not a benchmark's command


def test_portable_argv_leaves_arguments_that_are_not_paths_alone(common: ModuleType) -> None:
    argv = ["benchmarks/fewshot.py", "--systems", "setfit", "augment", "--lr", "1e-4", "--note", "/v1/predict is slow"]
    assert common.portable_argv(argv, cwd=PROJECT) == argv
    long_note = ["benchmarks/batch.py", "--note", "a note longer than any file name can be; " * 10]
    assert common.portable_argv(long_note, cwd=PROJECT) == long_note


def test_a_commit_given_by_the_sender_overrides_the_copy_s_own_git(
    common: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HRLM_GIT_COMMIT", "E5934CF9BECEA7AAA71CC3C3FB31D9BBC1D6471B")
    common.git_state.cache_clear()
    assert common.git_state() == ("e5934cf9becea7aaa71cc3c3fb31d9bbc1d6471b", None)
    monkeypatch.setenv("HRLM_GIT_COMMIT", "not a commit")  # ignored: the checkout's own state
    common.git_state.cache_clear()
    commit, _ = common.git_state()
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}", commit)
    common.git_state.cache_clear()


def test_dirty_means_code_changed_not_a_results_file(
    common: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "inference.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "results" / "inference-imdb.json").write_text("{}\n")
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "first")
    monkeypatch.delenv("HRLM_GIT_COMMIT", raising=False)
    monkeypatch.setattr(common, "PROJECT", tmp_path)

    def state() -> bool | None:
        common.git_state.cache_clear()
        return common.git_state()[1]

    try:
        assert state() is False
        (tmp_path / "benchmarks" / "results" / "inference-imdb.json").write_text('{"rows": []}\n')
        assert state() is False  # a results file written by an earlier run: the code is as committed
        (tmp_path / "scratch.csv").write_text("untracked\n")
        assert state() is False
        (tmp_path / "benchmarks" / "inference.py").write_text("x = 2\n")
        assert state() is True
    finally:
        common.git_state.cache_clear()


def test_matmul_gflops_reports_every_precision_asked(common: ModuleType) -> None:
    rates = common.matmul_gflops(64, 64, 64, threads=1, precisions=("fp32", "bf16", "int8"), repeats=1)
    assert set(rates) == {"fp32", "bf16", "int8"}
    assert rates["fp32"] > 0
    with pytest.raises(ValueError, match="statistic"):
        common.matmul_gflops(8, 8, 8, statistic="mean")


def test_a_merged_fewshot_file_keeps_the_commits_of_its_sources(
    common: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fewshot = importlib.import_module("fewshot")
    monkeypatch.setattr(sys, "argv", ["benchmarks/fewshot.py", "--merge", str(tmp_path / "a.json")])
    run = {"key": "tfidf", "system": "tfidf", "shots": 8, "accuracy": 0.2, "macro_f1": 0.1}
    sources: list[Path] = []
    for name, commit, dirty in (("a", "0a1b5d3", None), ("b", "1" * 40, True)):
        source = version_2_doc() if dirty is not None else version_1_doc()
        source.update(benchmark="fewshot", dataset="onet_tasks", git_commit=commit, complete=True, settings={})
        source["command"] = f"python benchmarks/fewshot.py --data ../shared/data/onet_tasks --merge /tmp/{name}0.json"
        source["runs"] = [{**run, "seed": len(sources) + 1}]
        if dirty is not None:
            source["git_dirty"] = dirty
        sources.append(tmp_path / f"{name}.json")
        sources[-1].write_text(json.dumps(source), encoding="utf-8")
    args = argparse.Namespace(note=["merged"], results_dir=tmp_path / "out", threads=1)

    path = fewshot.merge(sources, args)

    doc = json.loads(path.read_text(encoding="utf-8"))
    assert errors_of(doc) == []
    assert [(s["file"], s["git_commit"], s.get("git_dirty")) for s in doc["sources"]] == [
        ("<local>/a.json", "0a1b5d3", None),
        ("<local>/b.json", "1" * 40, True),
    ]
    assert doc["sources"][0]["machine"]["torch"] == "2.13.0"
    assert doc["sources"][0]["command"].endswith("--merge '<local>/a0.json'")
    assert MACHINE_PATH.search(path.read_text(encoding="utf-8")) is None
    assert doc["notes"] == ["merged"]
    assert doc["rows"][0]["seeds"] == 2


def test_the_record_distillation_speed_of_adds_to_a_results_file_matches_the_schema(
    common: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["benchmarks/distillation.py", "--speed-of", "/tmp/student", "--note", "n"])
    doc = json.loads((RESULTS / "distillation-imdb.json").read_text(encoding="utf-8"))
    record = common.run_record(["n"], threads=1)
    del record["schema_version"]  # as distillation.measure_speed does: the file's version is its training run's
    doc["cpu_speed"] = {**record, "texts": 300}
    assert errors_of(doc) == []
    assert doc["cpu_speed"]["argv"][-3:] == ["<local>/student", "--note", "n"]
