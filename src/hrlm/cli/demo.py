"""``hrlm demo``, the embedded default: a helpdesk-ticket router trained on the packaged sample tickets."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer

from hrlm.cli.app import app, handles_errors, out_console

SAMPLES = "samples"


def sample_path(name: str) -> Path:
    """Path of a packaged sample file (``helpdesk_tickets.csv``, ``incoming_tickets.csv``)."""
    return Path(str(resources.files("hrlm").joinpath(SAMPLES, name)))


def demo_config(epochs: float = 6.0) -> Any:
    """Settings that train the sample router in a minute or two on two CPU cores."""
    from hrlm.config import TrainConfig

    return TrainConfig(max_length=128, stride=32, epochs=epochs, batch_size=16, lr=1e-4, early_stopping_patience=3)


# What the demo writes into its folder; a folder that holds only these (and hidden temporaries) is a
# previous demo's, which a new run replaces without --overwrite.
DEMO_FILES = frozenset({"train.csv", "holdout.csv", "ticket-router", "hrlm.db", "hrlm.db-wal", "hrlm.db-shm", "models"})
DEMO_MARKER = ".hrlm-demo"


def claim_folder(out: Path, *, overwrite: bool = False) -> None:
    """Make ``out`` the demo's folder, refusing a user's non-empty folder unless ``overwrite``.

    Raises:
        ConfigError: ``out`` holds files the demo did not write, and ``overwrite`` is false.
    """
    from hrlm._fs import check_out_dir

    out = Path(out)
    ours = out.is_dir() and (
        (out / DEMO_MARKER).is_file() or all(p.name in DEMO_FILES or p.name.startswith(".") for p in out.iterdir())
    )
    if not ours:
        check_out_dir(out, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("written by `hrlm demo`, which replaces its files here on each run\n")


def run_demo(
    out: Path, *, epochs: float = 6.0, progress: bool = True, console: Any = None, overwrite: bool = False
) -> dict[str, Any]:
    """Train, evaluate and predict on the sample tickets; print what a new user wants to see.

    ``out`` must be new, empty or a previous demo's folder; ``overwrite`` lets the demo write into any.

    Returns:
        The test metrics, the model folder and a few predictions.
    """
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from hrlm.inference import Predictor
    from hrlm.training import train

    console = console or Console()
    out = Path(out)
    claim_folder(out, overwrite=overwrite)
    data, holdout = split_samples(out)
    model_dir = out / "ticket-router"
    n_tickets = len(pd.read_csv(data))
    console.print(
        f"[bold]hrlm demo[/]: training a helpdesk-ticket router on {n_tickets} sample tickets "
        f"({sample_path('helpdesk_tickets.csv').name}, {len(pd.read_csv(holdout))} more held back as the fixed "
        "holdout retraining is measured on) with the packaged all-MiniLM-L6-v2"
    )
    result = train(data, model_dir, demo_config(epochs), overwrite=True, progress=progress)
    m = result.metrics
    console.print(
        f"test split: accuracy {m['accuracy']:.3f}, macro F1 {m['macro_f1']:.3f}, "
        f"weighted F1 {m['weighted_f1']:.3f} on {m['n']} held-out tickets "
        f"(trained {result.train_seconds:.0f}s, {result.train_samples_per_s:.1f} samples/s)"
    )
    console.print(f"model:  {model_dir}")
    console.print(f"report: {model_dir / 'report' / 'report.html'}")

    incoming = pd.read_csv(sample_path("incoming_tickets.csv"))["text"].tolist()[:6]
    predictions = Predictor.from_dir(model_dir).predict(incoming)
    table = Table(title="predictions on new tickets", show_lines=False)
    table.add_column("ticket", overflow="fold", max_width=70)
    table.add_column("label")
    table.add_column("p", justify="right")
    for text, pred in zip(incoming, predictions, strict=True):
        table.add_row(text if len(text) < 140 else text[:137] + "...", str(pred.label), f"{pred.score:.2f}")
    console.print(table)
    return {
        "metrics": m,
        "model_dir": model_dir,
        "train_data": data,
        "holdout_data": holdout,
        "predictions": [p.to_dict() for p in predictions],
    }


def split_samples(out: Path, holdout_share: float = 0.1, seed: int = 7) -> tuple[Path, Path]:
    """Write the sample tickets as ``out/train.csv`` and a stratified ``out/holdout.csv``.

    Retraining from feedback trains on the first plus reviewers' answers and is gated on the second,
    which no model ever trains on.
    """
    import pandas as pd

    from hrlm._fs import atomic_file

    frame = pd.read_csv(sample_path("helpdesk_tickets.csv"))
    held = frame.groupby("label").sample(frac=holdout_share, random_state=seed)
    train = frame.drop(held.index)
    paths = (Path(out) / "train.csv", Path(out) / "holdout.csv")
    for part, path in zip((train, held), paths, strict=True):
        with atomic_file(path) as fh:
            part.to_csv(fh, index=False)
    return paths


def serve_demo(result: dict[str, Any], out: Path, *, port: int = 8000, console: Any = None) -> None:
    """Serve the demo model from a registry with the review pages, the queue filled from new tickets.

    A fresh database ``out/hrlm.db`` and registry ``out/models`` are made (a previous demo's are
    replaced); the model is registered and promoted; a client, a reviewer and an admin user get
    tokens; once the service answers, the incoming sample tickets go through ``POST /v1/predict``
    and ``POST /v1/review/fill`` sorts them into the review queue. Runs until Ctrl-C.
    """
    import shutil
    import socket
    import threading

    import pandas as pd
    import uvicorn
    from rich.console import Console

    from hrlm.errors import ConfigError
    from hrlm.lifecycle import Registry
    from hrlm.service import ServiceSettings, create_app
    from hrlm.store import create_user, make_engine, upgrade

    console = console or Console()
    out = Path(out).resolve()
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise ConfigError(
                f"port {port} on 127.0.0.1 is in use; pass `hrlm demo --port N` with a free one."
            ) from None
    for stale in (out / "hrlm.db", out / "hrlm.db-wal", out / "hrlm.db-shm"):
        stale.unlink(missing_ok=True)
    shutil.rmtree(out / "models", ignore_errors=True)
    url = f"sqlite:///{out / 'hrlm.db'}"
    engine = make_engine(url)
    try:
        upgrade(engine)
        registry = Registry(engine, out / "models")
        registry.register(result["model_dir"], actor="demo", stage="production", note="hrlm demo")
        tokens = {
            role: create_user(engine, f"demo-{role}", role, actor="demo") for role in ("client", "reviewer", "admin")
        }
    finally:
        engine.dispose()
    settings = ServiceSettings(
        database_url=url,
        registry_dir=str(out / "models"),
        port=port,
        train_data=str(result["train_data"]),
        holdout_data=str(result["holdout_data"]),
        # a fuller queue than the production defaults, so the demo has something to review
        review_confidence_below=0.9,
        review_uncertain_fraction=0.5,
        review_random_fraction=0.1,
        log_level="warning",
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", server_header=False)
    )
    base = f"http://127.0.0.1:{port}"

    def fill_and_announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            threading.Event().wait(0.1)
        incoming = pd.read_csv(sample_path("incoming_tickets.csv"))["text"].tolist()
        try:
            _post(f"{base}/v1/predict", tokens["client"], {"texts": incoming})
            filled = _post(f"{base}/v1/review/fill", tokens["admin"], {})
        except OSError as exc:  # the pages still work; say why the queue is empty
            console.print(f"[yellow]could not fill the review queue from the sample tickets: {exc}[/]")
            filled = {}
        console.print(
            f"\n[bold]the review loop is running[/]: {len(incoming)} new tickets predicted, "
            f"{filled.get('queued', 0)} of them queued for review",
            soft_wrap=True,
        )
        console.print(f"  review page: {base}/ui/review   (reviewer token below, or the admin one)", soft_wrap=True)
        console.print(f"  admin page:  {base}/ui/admin    (queue, agreement, models, retrain)", soft_wrap=True)
        console.print("  admin token:    " + tokens["admin"], soft_wrap=True, highlight=False)
        console.print("  reviewer token: " + tokens["reviewer"], soft_wrap=True, highlight=False)
        console.print("  client token:   " + tokens["client"], soft_wrap=True, highlight=False)
        console.print("press Ctrl-C to stop.")

    threading.Thread(target=fill_and_announce, name="hrlm-demo", daemon=True).start()
    server.run()


def _post(url: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    import json
    import urllib.request

    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return dict(json.loads(response.read()))


@app.command()
@handles_errors
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo model and report.")] = Path(
        "demo-output"
    ),
    epochs: Annotated[float, typer.Option(help="Passes over the sample tickets.")] = 6.0,
    serve: Annotated[
        bool, typer.Option("--serve/--no-serve", help="End by serving the model with the review pages.")
    ] = True,
    port: Annotated[int, typer.Option(help="Port of the demo service on 127.0.0.1.")] = 8000,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Write into an existing non-empty --out folder a demo did not write.")
    ] = False,
) -> None:
    """Train a helpdesk-ticket router on the sample tickets, report, predict, then serve it for review."""
    result = run_demo(out, epochs=epochs, progress=not quiet, console=out_console, overwrite=overwrite)
    if serve:
        serve_demo(result, out, port=port, console=out_console)
