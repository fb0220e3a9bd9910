"""Every learning-from-little-data technique run through the `hrlm` CLI on real data (O*NET).

Runs, as a user would, on O*NET occupation descriptions (1,016 texts, 23 occupation groups) and
task statements: `hrlm pretrain` on the descriptions, `hrlm train` from the adapted encoder,
`hrlm train --method setfit` on 8 labelled texts per class, `hrlm train --augment noise`,
`hrlm train --label-col "label,task_type"` (two tasks), and `hrlm distill` of a trained model to 3
layers. Records each command, its exit status, time and the figures it reports.

Example:
    python benchmarks/cli_techniques.py --data ../shared/data/onet_tasks --threads 1

Writes ``benchmarks/results/cli_techniques-onet_tasks.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_run_options, print_table, write_result


def run(cmd: list[str], work: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
    seconds = time.perf_counter() - t0
    print(f"$ {' '.join(cmd)}  -> exit {proc.returncode} in {seconds:.0f}s", flush=True)
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-2000:], sep="\n")
    return {"command": " ".join(cmd[1:]), "exit": proc.returncode, "seconds": round(seconds, 1)}


def metrics_of(folder: Path) -> dict[str, Any]:
    meta = json.loads((folder / "hrlm.json").read_text(encoding="utf-8"))
    m = meta.get("metrics", {})
    out = {k: m[k] for k in ("split", "accuracy", "macro_f1") if k in m}
    if "tasks" in m:
        out["tasks"] = m["tasks"]
    out["method"] = meta.get("extra", {}).get("method")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the onet_tasks folder")
    parser.add_argument("--threads", type=int, default=None)
    add_run_options(parser)
    args = parser.parse_args()

    import pandas as pd

    hrlm = str(Path(sys.executable).with_name("hrlm"))
    work = Path(tempfile.mkdtemp(prefix="hrlm-cli-"))
    threads = ["--threads", str(args.threads)] if args.threads else []
    desc = pd.read_csv(args.data / "onet_occupation_descriptions.csv")
    desc[["text", "label"]].to_csv(work / "descriptions.csv", index=False)
    desc[["text"]].to_csv(work / "corpus.csv", index=False)
    tasks = pd.read_csv(args.data / "onet_task_statements.csv")
    train = tasks[tasks.suggested_split == "train"]
    few = train.groupby("label").sample(8, random_state=1)
    few_test = tasks[tasks.suggested_split == "test"].sample(600, random_state=0)
    pd.concat([few.assign(split="train"), few_test.assign(split="test")])[["text", "label", "split"]].to_csv(
        work / "few.csv", index=False
    )
    two = tasks.dropna(subset=["task_type"]).sample(3000, random_state=random.Random(0).randrange(10**6))
    two[["text", "label", "task_type", "suggested_split"]].to_csv(work / "two_tasks.csv", index=False)

    rows: list[dict[str, Any]] = []
    common = ["--max-length", "64", "--quiet", *threads]
    two_args = ["--split-col", "suggested_split", "--epochs", "2", *common]
    distil_args = ["--layers", "3", "--epochs", "6", "--quiet", *threads]

    r = run([hrlm, "pretrain", "corpus.csv", "--out", "enc", "--epochs", "3", "--head-steps", "200", *common], work)
    report = json.loads((work / "enc" / "pretrain.json").read_text()) if r["exit"] == 0 else {}
    rows.append(
        {
            "technique": "masked-LM pretraining (occupation descriptions)",
            **r,
            "perplexity_before": report.get("before", {}).get("perplexity"),
            "perplexity_after": report.get("after", {}).get("perplexity"),
        }
    )
    for name, extra in (
        ("fine-tune from the packaged encoder", []),
        ("fine-tune from the adapted encoder", ["--base", "enc"]),
    ):
        out = "ft-" + ("adapted" if extra else "base")
        r = run([hrlm, "train", "descriptions.csv", "--out", out, "--epochs", "6", *extra, *common], work)
        rows.append({"technique": name, **r, **(metrics_of(work / out) if r["exit"] == 0 else {})})
    few_args = ["few.csv", "--split-col", "split", "--epochs", "10", "--patience", "0", *common]
    for name, extra in (
        ("8 labels per class: plain fine-tune", ["--method", "finetune"]),
        ("8 labels per class: SetFit (auto)", []),
        ("8 labels per class: fine-tune + noise augmentation", ["--method", "finetune", "--augment", "noise"]),
    ):
        out = f"few-{len(rows)}"
        r = run([hrlm, "train", *few_args[:1], "--out", out, *few_args[1:], *extra], work)
        rows.append({"technique": name, **r, **(metrics_of(work / out) if r["exit"] == 0 else {})})
    r = run([hrlm, "train", "two_tasks.csv", "--out", "two", "--label-col", "label,task_type", *two_args], work)
    rows.append({"technique": "two tasks on one encoder", **r, **(metrics_of(work / "two") if r["exit"] == 0 else {})})
    r = run([hrlm, "distill", "ft-base", "--data", "descriptions.csv", "--out", "student", *distil_args], work)
    rows.append(
        {
            "technique": "distil the base fine-tune to 3 layers",
            **r,
            **(metrics_of(work / "student") if r["exit"] == 0 else {}),
        }
    )
    shown = [{k: v for k, v in row.items() if k not in ("command", "tasks")} for row in rows]
    print_table(shown, "hrlm CLI on O*NET")
    path = write_result(
        "cli_techniques-onet_tasks",
        {
            "benchmark": "cli_techniques",
            "dataset": "onet_tasks",
            "split": "descriptions: seeded 80/10/10 split; few-shot: 8 per class from the suggested train split, "
            "600 suggested-test texts; two tasks: 3,000 task statements with a task type, suggested split",
            "rows": rows,
        },
        args=args,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
