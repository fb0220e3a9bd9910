"""``hrlm tune``: hyperparameter search with Optuna, and ``hrlm ensemble``: one model from several."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from hrlm.cli.app import Device, Precision, app, err_console, given, handles_errors, option, out_console
from hrlm.config import TrainConfig

# The settings that decide which rows are a model's test split (hrlm.training.train: load, then split).
SPLIT_SETTINGS = (
    "text_col",
    "label_col",
    "label_sep",
    "split_col",
    "group_col",
    "strict",
    "val_size",
    "test_size",
    "seed",
)

# the TrainConfig settings `hrlm tune` takes as flags: data columns, splits and hardware; the searched
# ones come from --space, everything else from --config
_TUNE_SETTINGS = (*SPLIT_SETTINGS, "base", "metric", "cv_folds", "precision", "device", "threads")


@app.command()
@handles_errors
def tune(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="Labelled data: CSV, TSV, JSONL or Parquet (optionally .gz).")],
    trials: Annotated[
        int,
        typer.Option("--trials", "-n", help="Finished trials the study should hold; a rerun runs the missing ones."),
    ] = 20,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder of study.db, best.toml, trials.csv, model/ and report/.")
    ] = Path("hrlm-tune"),
    storage: Annotated[
        str | None,
        typer.Option(help="Study database: sqlite:///path.db or postgresql://user@host/db. (default: OUT/study.db)"),
    ] = None,
    study: Annotated[
        str, typer.Option(help="Study name in the storage; workers sharing it share the trials.")
    ] = "hrlm",
    timeout: Annotated[float | None, typer.Option(help="Start no trial after this many seconds.")] = None,
    space: Annotated[
        Path | None, typer.Option("--space", help="TOML \\[space] table: a value (fixed), a list, or {low, high, log}.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML file of the settings trials start from.")
    ] = None,
    ensemble: Annotated[int, typer.Option(help="Combine the K best trials' models into OUT/ensemble; 0 = none.")] = 0,
    baseline: Annotated[
        bool, typer.Option("--baseline", help="Also train the unsearched settings, for a row beside the best.")
    ] = False,
    validation: Annotated[
        str, typer.Option(help="holdout (validation split), cv (folds of train), or auto: cv on small data.")
    ] = "auto",
    refit: Annotated[
        bool,
        typer.Option(
            "--refit", help="Train the final model on train + validation, for the epochs the best trial peaked at."
        ),
    ] = False,
    sampler_seed: Annotated[
        int | None,
        typer.Option(help="Seed of the TPE sampler; give each worker its own. (default: seed + trials so far)"),
    ] = None,
    heartbeat: Annotated[
        int, typer.Option(help="Seconds between a trial's heartbeats; silent for 3, a trial is failed and retried.")
    ] = 60,
    text_col: str = option(TrainConfig, "text_col"),
    label_col: str = option(TrainConfig, "label_col"),
    label_sep: str | None = option(TrainConfig, "label_sep"),
    split_col: str | None = option(TrainConfig, "split_col"),
    group_col: str | None = option(TrainConfig, "group_col"),
    strict: bool = option(TrainConfig, "strict", "--strict"),
    val_size: float = option(TrainConfig, "val_size"),
    test_size: float = option(TrainConfig, "test_size"),
    base: str | None = option(TrainConfig, "base"),
    metric: str = option(TrainConfig, "metric"),
    seed: int = option(TrainConfig, "seed"),
    cv_folds: int = option(TrainConfig, "cv_folds"),
    precision: Precision = option(TrainConfig, "precision"),
    device: Device = option(TrainConfig, "device"),
    threads: int | None = option(TrainConfig, "threads"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines or bars.")] = False,
) -> None:
    """Search training settings with Optuna (TPE, Hyperband pruning), then train and test the best.

    Trials are chosen on validation (on small data, by cross-validation of train); only OUT/model, the best
    trial's model (trained again where this process did not keep it), sees test. With --refit, OUT/model is the best
    settings trained on train + validation together instead.

    OUT/best.toml is a \\[train] table for `hrlm train --config`; OUT/report/report.html shows the search.

    Resume: run the same command again; finished trials are kept, and a trial killed mid-run is retried.

    Several machines: run it on each with one --storage postgresql://... and --study, each its own --sampler-seed.
    """
    from hrlm.tuning import tune as run_tune

    cfg = TrainConfig.from_sources(config, **given(ctx, _TUNE_SETTINGS))
    result = run_tune(
        data,
        out,
        cfg,
        space=space,
        trials=trials,
        storage=storage,
        study=study,
        timeout=timeout,
        sampler_seed=sampler_seed,
        ensemble=ensemble,
        baseline=baseline,
        validation=validation,
        refit=refit,
        heartbeat_s=heartbeat,
        progress=not quiet,
    )
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    from hrlm.tuning.report import comparison_rows

    table = Table(title=f"study {result.study}: {len(result.trials)} trials, {result.new_trials} run now")
    for name in ("system", f"validation {result.metric}", "test accuracy", "test macro F1"):
        table.add_column(name, justify="left" if name == "system" else "right")
    for row in comparison_rows(result):
        table.add_row(*(escape(str(row[0])), *("-" if v is None else f"{v:.4f}" for v in row[1:])))
    out_console.print(table)
    out_console.print(f"best settings: {out / 'best.toml'}")
    out_console.print(f"model:         {result.model_dir}")
    out_console.print(f"report:        {out / 'report' / 'report.html'}")


@app.command()
@handles_errors
def ensemble(
    members: Annotated[
        list[Path], typer.Argument(help="Two or more model folders with the same labels (from `hrlm train`, `tune`).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Ensemble folder to write.")],
    data: Annotated[
        Path | None,
        typer.Option(help="The file the members were trained on: score them and the ensemble on its test split."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing non-empty --out folder.")] = False,
) -> None:
    """Combine trained models into one model folder that answers with the mean of their probabilities.

    The folder loads like any model: `hrlm predict`, `evaluate`, `serve`, `models register`.
    With --data, the members and the ensemble are scored on the first member's test split.
    """
    from hrlm.inference import build_ensemble, check_members

    test = None
    if data is not None:
        test, notes = _members_test_split(check_members(members), data)  # the members are checked first
        for note in notes:
            err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    result = build_ensemble(members, out, test=test, overwrite=overwrite)
    rows = result["members"]
    if result["metrics"] is None:
        out_console.print(f"ensemble of {len(rows)} members written to {out}: " + ", ".join(r["name"] for r in rows))
        err_console.print("no scores: pass --data FILE, the file the members were trained on, to compare them.")
        return
    table = Table(title=f"test split, {result['metrics'].get('n')} rows")
    table.add_column("model")
    names = ("accuracy", "macro_f1", "weighted_f1")
    for name in names:
        table.add_column(name, justify="right")
    for row in [*rows, {"name": "ensemble", **result["metrics"]}]:
        table.add_row(escape(row["name"]), *("-" if row.get(n) is None else f"{row[n]:.4f}" for n in names))
    out_console.print(table)
    out_console.print(f"ensemble of {len(rows)} members written to {out}; report: {out / 'report' / 'report.html'}")


def _members_test_split(read: list[tuple[Path, Any]], data: Path) -> tuple[Any, list[str]]:
    """The first member's test split of ``data``, rebuilt from its recorded settings, and notes on the others."""
    from hrlm.config import TrainConfig
    from hrlm.data import split_dataset
    from hrlm.errors import ConfigError
    from hrlm.training import load_training_data

    (first_path, first), others = read[0], read[1:]
    settings = {k: first.train_config[k] for k in SPLIT_SETTINGS if k in first.train_config}
    if "label_col" not in settings:
        raise ConfigError(
            f"member {first_path.name!r} records no training settings in its hrlm.json, so its test split "
            "cannot be rebuilt; leave out --data and score the ensemble with `hrlm evaluate`."
        )
    cfg = TrainConfig.from_dict(settings)
    test = split_dataset(load_training_data(data, cfg), val_size=cfg.val_size, test_size=cfg.test_size, seed=cfg.seed)[
        "test"
    ]
    if len(test) == 0:
        raise ConfigError(
            f"member {first_path.name!r} was trained without a test split (test_size = {cfg.test_size}, no test "
            f"rows in split_col); score the ensemble on held-out data with `hrlm evaluate {{--out}} FILE`."
        )
    notes = []
    recorded = (first.extra.get("splits") or {}).get("test")
    if recorded is not None and recorded != len(test):
        notes.append(
            f"{data} gives a test split of {len(test)} rows, but member {first_path.name!r} was tested on "
            f"{recorded}: is it the file the members were trained on?"
        )
    for path, meta in others:
        theirs = {k: meta.train_config.get(k) for k in SPLIT_SETTINGS}
        differ = [
            f"{k} = {theirs[k]!r}, not {settings.get(k)!r}" for k in SPLIT_SETTINGS if theirs[k] != settings.get(k)
        ]
        if differ:
            notes.append(
                f"member {path.name!r} was split differently ({'; '.join(differ)}): its training rows may "
                f"include rows of {first_path.name!r}'s test split, which flatters it and the ensemble."
            )
        elif meta.data_fingerprint != first.data_fingerprint:
            notes.append(
                f"member {path.name!r} was trained on other data than {first_path.name!r} (fingerprints differ)."
            )
    return test, notes
