"""`hrlm batch`: streaming local scoring, resumption, errors, the CLI, and Ray Data giving the same predictions."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from hrlm.cli import app
from hrlm.config import BatchConfig
from hrlm.errors import ConfigError, DataError, ModelError
from hrlm.inference import Predictor, flatten_prediction, iter_chunks, run_batch
from hrlm.inference.batch import MANIFEST
from tests.conftest import make_texts

PREDICTION_COLUMNS = ["predicted_label", "score", "p_it", "p_leave", "p_payroll"]


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    """50 tickets with an id, a label and a text, one of them empty."""
    frame = pd.DataFrame(
        [(f"t{i:03d}", label, text) for i, (text, label) in enumerate(make_texts(17, seed=5)[:50])],
        columns=["id", "label", "text"],
    )
    frame.loc[7, "text"] = ""
    return frame


@pytest.fixture(scope="module")
def expected(trained_model: Path, rows: pd.DataFrame) -> pd.DataFrame:
    """What Predictor.predict says about each row, flattened as hrlm predict writes it."""
    preds = Predictor.from_dir(trained_model).predict(rows["text"].tolist())
    return pd.DataFrame([flatten_prediction(p.to_dict()) for p in preds])


# A row scored in another batch can differ in the last written decimal: where the default backend is
# bf16 (AVX-512 BF16 or AMX), the matrix units block the products by the batch's shape, so the same
# window rounds differently in a batch of another size (seen on AMX: 1e-6 on 2 of 50 rows).
BATCHING_TOLERANCE = 2e-5


def read_output(folder: Path) -> pd.DataFrame:
    parts = sorted(p for p in folder.iterdir() if ".part-" in p.name and not p.name.startswith("."))
    assert parts, f"no output parts in {folder}"
    read = pd.read_csv if parts[0].suffix == ".csv" else pd.read_parquet
    return pd.concat([read(p) for p in parts], ignore_index=True)


def assert_scored(out: pd.DataFrame, rows: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Every input column then the prediction columns, in the input's order, the Predictor's predictions."""
    assert list(out.columns) == list(rows.columns) + PREDICTION_COLUMNS
    out = out.sort_values("id").reset_index(drop=True)
    assert out["id"].tolist() == rows["id"].tolist()
    assert out["text"].fillna("").tolist() == rows["text"].tolist()
    assert out["predicted_label"].tolist() == expected["predicted_label"].tolist()
    for col in PREDICTION_COLUMNS[1:]:
        assert out[col].tolist() == pytest.approx(expected[col].tolist(), abs=BATCHING_TOLERANCE)


def write_formats(rows: pd.DataFrame, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    csv = folder / "tickets.csv"
    rows.to_csv(csv, index=False)
    jsonl = folder / "tickets.jsonl.gz"
    with gzip.open(jsonl, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows.to_dict(orient="records"))
    parquet = folder / "tickets.parquet"
    rows.to_parquet(parquet, index=False, row_group_size=16)
    return {"csv": csv, "jsonl": jsonl, "parquet": parquet}


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_local_scores_every_row_of_a_file_with_the_predictors_predictions(
    trained_model: Path, rows: pd.DataFrame, expected: pd.DataFrame, tmp_path: Path, fmt: str
) -> None:
    source = write_formats(rows, tmp_path / "in")[fmt]
    summary = run_batch(trained_model, source, tmp_path / "out", BatchConfig(batch_rows=16), progress=False)
    assert (summary.rows, summary.shards, summary.parts, summary.skipped_shards) == (50, 1, 4, 0)
    assert_scored(read_output(tmp_path / "out"), rows, expected)
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    key = source.name
    assert manifest["shards"] == {key: {"rows": 50, "parts": 4}}
    assert manifest["complete"] and manifest["rows"] == 50 and manifest["engine"] == "local"


def test_local_scores_a_folder_of_shards_of_mixed_formats_into_csv(
    trained_model: Path, rows: pd.DataFrame, expected: pd.DataFrame, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    (folder / "2026").mkdir(parents=True)
    rows.iloc[:20].to_csv(folder / "a.csv", index=False)
    rows.iloc[20:35].to_parquet(folder / "2026" / "b.parquet", index=False)
    rows.iloc[35:].to_csv(folder / "c.tsv.gz", sep="\t", index=False, compression="gzip")
    (folder / "_SUCCESS").write_text("")
    (folder / "notes.md").write_text("not a shard")
    out = tmp_path / "out"
    summary = run_batch(trained_model, folder, out, BatchConfig(batch_rows=10, format="csv"), progress=False)
    assert (summary.rows, summary.shards, summary.parts) == (50, 3, 6)
    names = sorted(p.name for p in out.iterdir())
    assert "2026__b.parquet.part-00001.csv" in names and "c.tsv.gz.part-00001.csv" in names
    assert_scored(read_output(out), rows, expected)


def test_the_chunked_reader_never_holds_more_than_batch_rows_rows(
    trained_model: Path, rows: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = write_formats(rows, tmp_path / "in")
    for source in sources.values():
        sizes = [len(chunk) for chunk in iter_chunks(source, 7)]
        assert sum(sizes) == 50 and max(sizes) <= 7, (source, sizes)
    seen: list[int] = []
    original = Predictor.predict

    def counting(self: Predictor, texts: Any, **kw: Any) -> Any:
        seen.append(len(texts))
        return original(self, texts, **kw)

    monkeypatch.setattr(Predictor, "predict", counting)
    run_batch(trained_model, sources["csv"], tmp_path / "out", BatchConfig(batch_rows=7), progress=False)
    assert seen == [7] * 7 + [1]


def test_a_rerun_skips_finished_shards_and_chunks_and_ignores_a_killed_writers_temporary(
    trained_model: Path, rows: pd.DataFrame, expected: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    rows.iloc[:20].to_csv(folder / "a.csv", index=False)
    rows.iloc[20:].to_csv(folder / "b.csv", index=False)
    out = tmp_path / "out"
    cfg = BatchConfig(batch_rows=10)
    calls: list[int] = []
    original = Predictor.predict

    def crashing(self: Predictor, texts: Any, **kw: Any) -> Any:
        calls.append(len(texts))
        if len(calls) == 4:  # a.csv done (2 chunks), b.csv's first chunk written, then the crash
            raise KeyboardInterrupt
        return original(self, texts, **kw)

    monkeypatch.setattr(Predictor, "predict", crashing)
    with pytest.raises(KeyboardInterrupt):
        run_batch(trained_model, folder, out, cfg, progress=False)
    assert json.loads((out / MANIFEST).read_text())["shards"] == {"a.csv": {"rows": 20, "parts": 2}}
    assert (out / "b.csv.part-00000.parquet").exists() and not (out / "b.csv.part-00001.parquet").exists()
    # what a writer killed by SIGKILL leaves: a temporary named after its (now gone) process
    dead_pid = 2**22 + 12345
    temporary = out / f".b.csv.part-00001.parquet.{dead_pid}-abcd1234.tmp"
    temporary.write_bytes(b"half a parquet file")
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("*.part-*") if not p.name.startswith(".")}

    calls.clear()
    summary = run_batch(trained_model, folder, out, cfg, progress=False)
    assert calls == [10, 10]  # only b.csv's two chunks after the first
    assert (summary.skipped_shards, summary.skipped_parts, summary.rows) == (1, 1, 20)
    assert not temporary.exists()
    assert {n: (out / n).stat().st_mtime_ns for n in finished} == finished  # nothing finished was rewritten
    assert_scored(read_output(out), rows, expected)

    calls.clear()
    again = run_batch(trained_model, folder, out, cfg, progress=False)
    assert calls == [] and again.skipped_shards == 2 and again.rows == 0


def test_a_rerun_with_other_settings_is_refused(trained_model: Path, rows: pd.DataFrame, tmp_path: Path) -> None:
    source = write_formats(rows, tmp_path / "in")["csv"]
    run_batch(trained_model, source, tmp_path / "out", BatchConfig(batch_rows=25), progress=False)
    with pytest.raises(ConfigError, match="--format"):
        run_batch(trained_model, source, tmp_path / "out", BatchConfig(format="csv"), progress=False)
    with pytest.raises(ConfigError, match="--batch-rows 25"):
        run_batch(trained_model, source, tmp_path / "out", BatchConfig(batch_rows=10), progress=False)


def test_bad_input_output_and_model_are_one_line_errors(
    trained_model: Path, rows: pd.DataFrame, tmp_path: Path
) -> None:
    source = write_formats(rows, tmp_path / "in")["csv"]
    with pytest.raises(DataError, match=r"column .body. not found .* Pass --text-col"):
        run_batch(trained_model, source, tmp_path / "o1", BatchConfig(text_col="body"), progress=False)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="cannot read it as PARQUET"):
        run_batch(trained_model, broken, tmp_path / "o2", progress=False)
    with pytest.raises(DataError, match="not found"):
        run_batch(trained_model, tmp_path / "missing.csv", tmp_path / "o3", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no \.csv"):
        run_batch(trained_model, tmp_path / "empty", tmp_path / "o4", progress=False)
    a_file = tmp_path / "out.txt"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        run_batch(trained_model, source, a_file, progress=False)
    with pytest.raises(ModelError):
        run_batch(tmp_path / "in", source, tmp_path / "o5", progress=False)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o5").exists()  # nothing made before the checks


def runner_invoke(args: list[str]) -> Any:
    return CliRunner().invoke(app, args)


def test_cli_scores_a_file_and_prints_a_summary(
    trained_model: Path, rows: pd.DataFrame, expected: pd.DataFrame, tmp_path: Path
) -> None:
    source = write_formats(rows, tmp_path / "in")["jsonl"]
    out = tmp_path / "out"
    result = runner_invoke(["batch", str(trained_model), str(source), str(out), "--batch-rows", "20", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "scored 50 rows of 1 shard(s) into 3 file(s)" in result.output
    assert_scored(read_output(out), rows, expected)
    rerun = runner_invoke(["batch", str(trained_model), str(source), str(out), "--batch-rows", "20", "--quiet"])
    assert rerun.exit_code == 0 and "scored 0 rows" in rerun.output and "skipped 1 finished shard" in rerun.output


def test_cli_errors_are_one_line(trained_model: Path, rows: pd.DataFrame, tmp_path: Path) -> None:
    source = write_formats(rows, tmp_path / "in")["csv"]
    result = runner_invoke(["batch", str(trained_model), str(source), str(tmp_path / "o"), "--text-col", "body"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "column 'body' not found" in result.output
    result = runner_invoke(["batch", str(trained_model), str(source), str(tmp_path / "o"), "--address", "auto"])
    assert result.exit_code == 1 and "needs --engine ray" in result.output


def test_predict_writes_the_same_columns_as_batch(trained_model: Path, rows: pd.DataFrame, tmp_path: Path) -> None:
    source = write_formats(rows, tmp_path / "in")["csv"]
    result = runner_invoke(["predict", str(trained_model), str(source), "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    assert list(pd.read_csv(tmp_path / "p.csv").columns) == list(rows.columns) + PREDICTION_COLUMNS


# --- Ray --------------------------------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_ray_gives_the_same_predictions_as_local(
    ray_local: Any, trained_model: Path, rows: pd.DataFrame, tmp_path: Path, fmt: str
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    rows.iloc[:30].to_csv(folder / "a.csv", index=False)
    rows.iloc[30:].to_parquet(folder / "b.parquet", index=False)
    local = run_batch(trained_model, folder, tmp_path / "local", BatchConfig(format=fmt), progress=False)
    cfg = BatchConfig(engine="ray", format=fmt, batch_rows=8, actors=2)
    summary = run_batch(trained_model, folder, tmp_path / "ray", cfg, progress=False)
    assert (summary.rows, summary.shards) == (local.rows, local.shards) == (50, 2)
    # a pool of two actors per input shard, each actor counted with the rows it scored
    assert sum(a["rows"] for a in summary.actors) == 50 and len(summary.actors) <= 2 * summary.shards
    ray_out, local_out = read_output(tmp_path / "ray"), read_output(tmp_path / "local")
    assert list(ray_out.columns) == list(local_out.columns) == list(rows.columns) + PREDICTION_COLUMNS
    assert ray_out["id"].tolist() == local_out["id"].tolist()  # the input's order
    # object or string: the same values; labels exactly, probabilities up to the batches' rounding
    pd.testing.assert_frame_equal(ray_out, local_out, check_dtype=False, check_exact=False, atol=BATCHING_TOLERANCE)
    manifest = json.loads((tmp_path / "ray" / MANIFEST).read_text())
    assert manifest["engine"] == "ray" and manifest["rows"] == 50 and manifest["complete"]
    assert not [p for p in (tmp_path / "ray").iterdir() if p.name.startswith(".")]  # no temporary left


@pytest.mark.ray
def test_ray_resumes_only_the_shards_the_manifest_does_not_vouch_for(
    ray_local: Any, trained_model: Path, rows: pd.DataFrame, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    rows.iloc[:25].to_csv(folder / "a.csv", index=False)
    rows.iloc[25:].to_csv(folder / "b.csv", index=False)
    out = tmp_path / "out"
    cfg = BatchConfig(engine="ray", actors=1)
    run_batch(trained_model, folder, out, cfg, progress=False)
    manifest = json.loads((out / MANIFEST).read_text())
    del manifest["shards"]["b.csv"]  # as if killed after writing b.csv's parts, before recording them
    (out / MANIFEST).write_text(json.dumps(manifest))
    stale = out / "b.csv.part-00007.parquet"
    stale.write_bytes(b"a part of a killed run")
    a_parts = {p.name: p.stat().st_mtime_ns for p in out.glob("a.csv.part-*")}
    summary = run_batch(trained_model, folder, out, cfg, progress=False)
    assert (summary.skipped_shards, summary.shards, summary.rows) == (1, 1, 25)
    assert not stale.exists()
    assert {n: (out / n).stat().st_mtime_ns for n in a_parts} == a_parts
    assert len(read_output(out)) == 50


@pytest.mark.ray
def test_ray_refuses_more_actors_than_cores(
    ray_local: Any, trained_model: Path, rows: pd.DataFrame, tmp_path: Path
) -> None:
    source = write_formats(rows, tmp_path / "in")["csv"]
    with pytest.raises(ConfigError, match="needs 6 cores; the Ray cluster has 2"):
        run_batch(trained_model, source, tmp_path / "o", BatchConfig(engine="ray", actors=3, threads=2), progress=False)


@pytest.mark.ray
def test_ray_streams_a_shard_larger_than_its_object_store_budget(
    ray_local: Any, trained_model: Path, rows: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray.data

    from hrlm.inference import ray_batch

    # blocks of 512 bytes and one in flight per actor: the 50 rows are more than twice the budget
    monkeypatch.setattr(ray_batch, "MAX_BLOCK_BYTES", 512)
    monkeypatch.setattr(ray_batch, "BLOCKS_IN_FLIGHT_PER_ACTOR", 1)
    source = write_formats(rows, tmp_path / "in")["csv"]
    assert source.stat().st_size > 2 * ray_batch.object_store_budget(2)
    options = ray.data.DataContext.get_current().execution_options
    before = options.resource_limits
    local = run_batch(trained_model, source, tmp_path / "local", BatchConfig(), progress=False)
    summary = run_batch(trained_model, source, tmp_path / "ray", BatchConfig(engine="ray", actors=2), progress=False)
    assert summary.rows == local.rows == 50 and summary.parts > 1
    ray_out, local_out = read_output(tmp_path / "ray"), read_output(tmp_path / "local")
    pd.testing.assert_frame_equal(ray_out, local_out, check_dtype=False, check_exact=False, atol=BATCHING_TOLERANCE)
    assert ray.data.DataContext.get_current().execution_options.resource_limits == before  # restored


def test_blocks_and_the_object_store_budget_do_not_grow_with_the_input(tmp_path: Path) -> None:
    from hrlm.inference.ray_batch import MAX_BLOCK_BYTES, block_bytes, object_store_budget

    small, large = tmp_path / "small.csv", tmp_path / "large.csv"
    for path, size in ((small, 40 * 2**20), (large, 400 * 2**20)):
        with path.open("wb") as fh:
            fh.truncate(size)  # a sparse file: only its size is read
    assert block_bytes(small, 2, None) == block_bytes(large, 2, None) == MAX_BLOCK_BYTES
    assert block_bytes(large, 2, 2**20) == 2**20  # the context's own, lower limit wins
    assert block_bytes(tmp_path / "none.csv", 2, None) == 2**20
    assert object_store_budget(4) == 2 * object_store_budget(2)


def test_plan_actors_divides_the_cores() -> None:
    from hrlm.inference.ray_batch import plan_actors

    assert plan_actors(8, 0, None, None) == (8, 1)
    assert plan_actors(8, 0, 2, None) == (2, 4)
    assert plan_actors(8, 0, None, 4) == (2, 4)
    assert plan_actors(16, 2, None, None) == (2, 8)
    with pytest.raises(ConfigError, match="a GPU each"):
        plan_actors(16, 2, 3, None)


def test_the_row_counter_of_ray_runs_imports_nothing_heavy() -> None:
    import subprocess
    import sys

    code = "import sys, hrlm._tally; print(sorted({'torch', 'pandas', 'numpy', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"a worker that only counts rows would import {out.strip()}"


def test_writes_at_once_follow_the_actors_not_the_input() -> None:
    from hrlm.inference.ray_batch import io_tasks

    assert io_tasks(1) == io_tasks(2) == 2
    assert io_tasks(16) == 16
