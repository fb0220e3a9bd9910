"""``hrlm tune`` on O*NET tasks (suggested split) against the default settings on the same split.

Runs a study (TPE + Hyperband, stored in SQLite) on the training split, chooses on the validation
split and measures the best trial's model once on test, beside the default settings trained on the
same split (``--baseline``) and, with ``--ensemble K``, the K best trials combined.
Records every trial (settings, validation score, seconds, state), the pruned share and, with
``--ensemble``, each member alone on test (``summary.ensemble_members``). With ``--refit`` the final
model is the best settings trained on train + validation (``hrlm tune --refit``); the best trial's own
model (train only) is measured on test too, for a row beside it.

``--kill-after S`` shows resuming: the study first runs as ``hrlm tune`` in a child process that is
killed (SIGKILL) S seconds in (or S seconds after ``--kill-when-finished N`` trials have finished),
mid-trial; the study is then run again to its ``--trials`` and the file records that the trials
finished before the kill were kept, not redone. ``--bound KEY=TOML`` narrows one key of the search
space as a ``--space`` file would; the space is recorded in the results file.

Examples:
    python benchmarks/tune.py --trials 20 --max-length 64 --ensemble 3 --kill-after 900
    python benchmarks/tune.py --trials 10 --ensemble 3 --kill-when-finished 1 --kill-after 120 \
        --bound 'class_weights="balanced"'
    python benchmarks/tune.py --trials 14 --ensemble 3 --refit --bound 'ema_epochs={low = 0.5, high = 2.0}'
    python benchmarks/tune.py --trials 2 --limit-train 200 --limit-eval 100 --max-length 32 --epochs 1 --variant smoke

Prints a table and writes ``benchmarks/results/tune-onet_tasks[-<variant>].json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PROJECT, SHARED, add_run_options, print_table, write_result

ONET = SHARED / "data" / "onet_tasks" / "onet_task_statements.csv"
FINISHED = ("COMPLETE", "PRUNED")  # trial states that a resumed study keeps


def slice_file(
    source: Path, folder: Path, limit_train: int | None, limit_eval: int | None, seed: int
) -> tuple[Path, str]:
    """The data file to tune on: ``source``, or a sample of its train (and validation, test) rows in ``folder``."""
    with source.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    parts: dict[str, list[dict[str, str]]] = {"train": [], "validation": [], "test": []}
    for row in rows:
        parts[row["suggested_split"]].append(row)
    rng = random.Random(seed)
    limits = {"train": limit_train, "validation": limit_eval, "test": limit_eval}
    for name, limit in limits.items():
        if limit and limit < len(parts[name]):
            parts[name] = sample_classes(parts[name], limit, rng)
    desc = "suggested_split: " + " / ".join(f"{k} {len(v)}" for k, v in parts.items())
    if not limit_train and not limit_eval:
        return source, desc
    path = folder / "onet_slice.csv"
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for name in parts:
            writer.writerows(parts[name])
    return path, desc + f" (sampled, seed {seed})"


def sample_classes(rows: list[dict[str, str]], limit: int, rng: random.Random) -> list[dict[str, str]]:
    """``limit`` rows drawn at random, two of every class first (the fewest a class may have to be split)."""
    order = rng.sample(rows, len(rows))
    seen: dict[str, int] = {}
    first = []
    for i, row in enumerate(order):
        if seen.get(row["label"], 0) < 2:
            seen[row["label"]] = seen.get(row["label"], 0) + 1
            first.append(i)
    taken = set(first)
    rest = [i for i in range(len(order)) if i not in taken]
    return [order[i] for i in (first + rest)[: max(limit, len(first))]]


def write_inputs(folder: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """The ``--config`` (the starting, default settings) and ``--space`` files of the study."""
    config = folder / "base.toml"
    lines = ["[train]", 'split_col = "suggested_split"', f"max_length = {args.max_length}", f"seed = {args.seed}"]
    if args.epochs is not None:
        lines.append(f"epochs = {float(args.epochs)}")
    if args.base:
        lines.append(f"base = {json.dumps(str(args.base))}")
    config.write_text("\n".join(lines) + "\n")
    space = folder / "space.toml"
    fixed = [f"max_length = {args.max_length}"] + ([f"epochs = {args.epochs}"] if args.epochs is not None else [])
    for bound in args.bound:
        key, sep, value = bound.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise SystemExit(f"--bound {bound!r}: write KEY=VALUE, e.g. 'lr={{low = 5e-5, high = 3e-4, log = true}}'")
        if key.strip() in ("max_length", "epochs") and any(line.startswith(key.strip() + " ") for line in fixed):
            raise SystemExit(f"--bound {key.strip()}: set by --max-length/--epochs already; drop one of them")
        fixed.append(f"{key.strip()} = {value.strip()}")
    space.write_text("[space]\n" + "\n".join(fixed) + "\n")
    return config, space


def killed_run(args: argparse.Namespace, data: Path, out: Path, config: Path, space: Path) -> dict[str, Any]:
    """Start ``hrlm tune`` in a child process, SIGKILL it after ``--kill-after`` seconds; what it left."""
    cmd = [sys.executable, "-m", "hrlm.cli", "tune", str(data), "--trials", str(args.trials), "--out", str(out)]
    cmd += ["--config", str(config), "--space", str(space), "--heartbeat", str(args.heartbeat), "--quiet"]
    cmd += ["--validation", "holdout"]
    if args.ensemble:  # the trials finished before the kill keep their models for the ensemble
        cmd += ["--ensemble", str(args.ensemble)]
    child = subprocess.Popen(cmd, cwd=PROJECT, start_new_session=True)
    try:
        if args.kill_when_finished:
            # the clock starts once that many trials are finished, so the kill lands in the next one
            while len(finished(out)) < args.kill_when_finished:
                if child.poll() is not None:
                    raise SystemExit(f"the study ended before {args.kill_when_finished} trials finished")
                time.sleep(5)
        child.wait(timeout=args.kill_after)
        raise SystemExit(f"the study ended before --kill-after {args.kill_after}s; give a shorter one")
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    rows = json_trials(out)
    return {
        "killed_after_s": args.kill_after,
        "kill_when_finished": args.kill_when_finished,
        "finished_before": [r for r in rows if r["state"] in FINISHED],
        "running_at_kill": [r["number"] for r in rows if r["state"] == "RUNNING"],
    }


def finished(out: Path) -> list[dict[str, Any]]:
    """The finished (complete or pruned) trials of the study in ``out``; none while it has no database yet."""
    if not (out / "study.db").is_file():
        return []
    try:
        return [r for r in json_trials(out) if r["state"] in FINISHED]
    except KeyError:  # the database exists, the study is not created yet
        return []


def json_trials(out: Path) -> list[dict[str, Any]]:
    """The study's trials as ``hrlm.tuning`` records them (read from the database, not from trials.json)."""
    import optuna

    from hrlm.tuning.store import trial_rows

    storage = f"sqlite:///{out / 'study.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="hrlm", storage=storage)
    return trial_rows(study.get_trials(), "macro_f1")


def member_rows(ensemble: dict[str, Any]) -> list[dict[str, Any]]:
    """Each member of ``TuneResult.ensemble`` alone on the ensemble's test split: trial number and scores."""
    scored = ensemble["summary"].get("members") or []
    return [
        {"trial": number, **{k: m.get(k) for k in ("accuracy", "macro_f1", "weighted_f1")}}
        for number, m in zip(ensemble["members"], scored, strict=True)
    ]


def test_row(system: str, value: float | None, metrics: dict[str, Any], seconds: float | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"system": system, "val_macro_f1": None if value is None else round(value, 4)}
    for key in ("accuracy", "macro_f1", "weighted_f1"):
        if metrics.get(key) is not None:
            row[key] = round(float(metrics[key]), 4)
    if seconds is not None:
        row["seconds"] = round(seconds, 1)
    return row


def trial_model_test(folder: Path, data: Path, cfg: Any, work: Path) -> dict[str, Any]:
    """The test scores of a trial's kept model, measured as ``hrlm tune`` measures its final model."""
    from hrlm.data import split_dataset
    from hrlm.training import load_training_data
    from hrlm.training.remeasure import remeasure

    splits = split_dataset(load_training_data(data, cfg), val_size=cfg.val_size, test_size=cfg.test_size, seed=cfg.seed)
    return remeasure(folder, splits, work / "trial-model", overwrite=True).metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ONET, help="onet_task_statements.csv")
    parser.add_argument("--trials", type=int, default=20, help="finished trials the study should hold")
    parser.add_argument("--timeout", type=float, default=None, help="start no trial after this many seconds")
    parser.add_argument("--limit-train", type=int, default=None, help="sample this many training texts (speed)")
    parser.add_argument("--limit-eval", type=int, default=None, help="sample this many validation and test texts")
    parser.add_argument("--max-length", type=int, default=64, help="tokens per window, fixed in the space")
    parser.add_argument("--epochs", type=int, default=None, help="fix the epochs (default: searched, 2-6)")
    parser.add_argument(
        "--bound",
        action="append",
        default=[],
        metavar="KEY=TOML",
        help="narrow one key of the search space, as in a --space file: lr={low = 5e-5, high = 3e-4, log = true}",
    )
    parser.add_argument("--ensemble", type=int, default=0, help="combine the K best trials")
    parser.add_argument("--refit", action="store_true", help="the final model: best settings on train + validation")
    parser.add_argument("--kill-after", type=float, default=None, help="kill a first run this many seconds in")
    parser.add_argument(
        "--kill-when-finished",
        type=int,
        default=None,
        metavar="N",
        help="start --kill-after's clock once N trials have finished (so that the kill is mid-trial, after some)",
    )
    parser.add_argument("--heartbeat", type=int, default=10, help="seconds between a trial's heartbeats")
    parser.add_argument("--base", type=Path, default=None, help="encoder folder (default: the packaged MiniLM)")
    parser.add_argument("--out", type=Path, default=None, help="the study folder (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--variant", default=None, help="suffix of the results file name")
    add_run_options(parser)
    args = parser.parse_args()

    from hrlm.config import TrainConfig
    from hrlm.tuning import tune

    work = Path(tempfile.mkdtemp(prefix="hrlm-tune-bench-"))
    out = args.out or work / "study"
    data, split_desc = slice_file(args.data, work, args.limit_train, args.limit_eval, args.seed)
    config, space = write_inputs(work, args)
    print(f"onet_tasks: {split_desc}; study in {out}", flush=True)
    resume: dict[str, Any] | None = None
    if args.kill_after:
        resume = killed_run(args, data, out, config, space)
        print(f"killed after {args.kill_after:g}s: {len(resume['finished_before'])} trials finished", flush=True)

    cfg = TrainConfig.from_sources(config)
    t0 = time.perf_counter()
    result = tune(
        data,
        out,
        cfg,
        space=space,
        trials=args.trials,
        timeout=args.timeout,
        ensemble=args.ensemble,
        baseline=True,
        validation="holdout",
        refit=args.refit,
        heartbeat_s=args.heartbeat,
    )
    seconds = time.perf_counter() - t0
    states = [t["state"] for t in result.trials]
    finished = [s for s in states if s in FINISHED]
    best = f"tuned: best of {len(finished)} trials (trial {result.best_number})"
    if result.refit_epochs is not None:
        best += f", refit on train + validation for {result.refit_epochs:g} epochs"
    rows = [test_row(best, result.best_value, result.test_metrics)]
    if result.refit_epochs is not None:
        own = trial_model_test(out / "trials" / str(result.best_number), data, cfg, work)
        rows.append(test_row(f"trial {result.best_number}'s own model (train only)", result.best_value, own))
    assert result.baseline is not None
    rows.append(
        test_row("default settings", result.baseline["value"], result.baseline["test"], result.baseline["seconds"])
    )
    if result.ensemble is not None:
        metrics = result.ensemble["summary"].get("metrics") or {}
        rows.append(test_row(f"ensemble of trials {result.ensemble['members']}", None, metrics))
    summary: dict[str, Any] = {
        "trials": len(states),
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"),
        "pruned_share": round(states.count("PRUNED") / max(len(finished), 1), 3),
        "trial_seconds": round(sum(t["seconds"] or 0.0 for t in result.trials), 1),
        "run_seconds": round(seconds, 1),
        "best_trial": result.best_number,
        "best_settings": result.best_settings,
        "refit_epochs": result.refit_epochs,
        "study_notes": result.notes,  # how the best trial's model was measured, and what the study noticed
    }
    if result.ensemble is not None:
        summary["ensemble_members"] = member_rows(result.ensemble)
    if resume is not None:
        now = {t["number"]: t for t in result.trials}
        kept = all(
            now[t["number"]]["started"] == t["started"] and now[t["number"]]["value"] == t["value"]
            for t in resume["finished_before"]
        )
        summary["resume"] = {
            "killed_after_s": resume["killed_after_s"],
            "clock_started_after_finished_trials": resume["kill_when_finished"],
            "finished_before_kill": [t["number"] for t in resume["finished_before"]],
            "running_at_kill": resume["running_at_kill"],
            "their_state_now": {n: now[n]["state"] for n in resume["running_at_kill"]},
            "finished_trials_kept_not_redone": kept,
            "trials_run_after_resume": result.new_trials,
        }
    print_table(rows, f"O*NET tasks test ({result.test_metrics.get('n')} texts)")
    print_table([{k: t[k] for k in ("number", "state", "value", "seconds")} for t in result.trials], "trials")
    name = "tune-onet_tasks" + (f"-{args.variant}" if args.variant else "")
    history = [
        {k: t[k] for k in ("number", "state", "value", "seconds", "evaluations", "params")} for t in result.trials
    ]
    path = write_result(
        name,
        {
            "benchmark": "tune",
            "dataset": "onet_tasks",
            "split": split_desc,
            "rows": rows,
            "summary": summary,
            "history": history,
            "settings": {"start": cfg.to_dict(), "space": space.read_text(), "trials": args.trials},
        },
        args=args,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
