"""The embedded default: a helpdesk-ticket router trained on the packaged sample tickets."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

SAMPLES = "samples"


def sample_path(name: str) -> Path:
    """Path of a packaged sample file (``helpdesk_tickets.csv``, ``incoming_tickets.csv``)."""
    return Path(str(resources.files("hrlm").joinpath(SAMPLES, name)))


def demo_config(epochs: float = 6.0) -> Any:
    """Settings that train the sample router in a minute or two on two CPU cores."""
    from hrlm.config import TrainConfig

    return TrainConfig(max_length=128, stride=32, epochs=epochs, batch_size=16, lr=1e-4, early_stopping_patience=3)


def run_demo(out: Path, *, epochs: float = 6.0, progress: bool = True, console: Any = None) -> dict[str, Any]:
    """Train, evaluate and predict on the sample tickets; print what a new user wants to see.

    Returns:
        The test metrics, the model folder and a few predictions.
    """
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from hrlm.inference import Predictor
    from hrlm.training import train

    console = console or Console()
    data = sample_path("helpdesk_tickets.csv")
    model_dir = Path(out) / "ticket-router"
    n_tickets = len(pd.read_csv(data))
    console.print(
        f"[bold]hrlm demo[/]: training a helpdesk-ticket router on {n_tickets} sample tickets "
        f"({data.name}) with the packaged all-MiniLM-L6-v2"
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
    return {"metrics": m, "model_dir": model_dir, "predictions": [p.to_dict() for p in predictions]}
