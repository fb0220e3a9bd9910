"""CLI commands of the model registry: ``hrlm models list|show|register|promote|reject|archive|rollback``.

Registered on :data:`hrlm.cli.app.app` when :mod:`hrlm.cli.app` is imported. The registry lives in the
service's database and ``registry_dir``; a running ``hrlm serve`` follows a promotion or rollback
made here within ``registry_poll_s`` seconds.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from hrlm.cli.app import app, handles_errors, out_console
from hrlm.cli.serve import DB_HELP, SERVE_CONFIG_HELP, migrated_store

if TYPE_CHECKING:
    from hrlm.lifecycle import Registry, VersionInfo

REGISTRY_HELP = "Folder of the registry's model versions. (default: $HRLM_REGISTRY_DIR, else hrlm-models)"
REASON_HELP = "Why; kept in the stage history and the audit log."

models_app = typer.Typer(
    help="The model registry: versions and their stages (candidate, production, archived, rejected).",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")

DatabaseUrl = Annotated[str | None, typer.Option(help=DB_HELP)]
Config = Annotated[Path | None, typer.Option("--config", help=SERVE_CONFIG_HELP)]
RegistryDir = Annotated[Path | None, typer.Option(help=REGISTRY_HELP)]
Reason = Annotated[str | None, typer.Option(help=REASON_HELP)]


def actor() -> str:
    """Who the audit log names for a change made here: ``cli:<login name>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "cli"


@contextmanager
def _registry(config: Path | None, database_url: str | None, registry_dir: Path | None) -> Iterator[Registry]:
    from hrlm.lifecycle import Registry

    flags = {"database_url": database_url, "registry_dir": str(registry_dir) if registry_dir is not None else None}
    with migrated_store(config, **flags) as (settings, engine):
        yield Registry(engine, settings.registry_dir)


def _macro_f1(metrics: dict[str, Any] | None) -> str:
    value = (metrics or {}).get("macro_f1")
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


def _said(verb: str, info: VersionInfo) -> None:
    out_console.print(f"{verb} {escape(info.version)}: now {info.stage}", highlight=False, soft_wrap=True)


@models_app.command("list")
@handles_errors
def models_list(
    stage: Annotated[str | None, typer.Option(help="Only versions in this stage.")] = None,
    database_url: DatabaseUrl = None,
    config: Config = None,
    registry_dir: RegistryDir = None,
) -> None:
    """List the registered versions, newest first: stage, origin (and parent), macro F1, note."""
    with _registry(config, database_url, registry_dir) as registry:
        rows = registry.versions(stage)
    table = Table(title=f"{len(rows)} model versions")
    for col in ("version", "stage", "origin", "created", "F1", "note"):
        wraps = col in ("origin", "created", "note")  # the others stay whole, to copy and to grep
        table.add_column(col, overflow="fold", no_wrap=not wraps, min_width=8 if wraps else None)
    for r in rows:
        style = "bold green" if r.stage == "production" else ("red" if r.stage == "rejected" else None)
        origin = f"{r.origin} from {r.parent}" if r.parent else r.origin
        table.add_row(
            escape(r.version),
            r.stage,
            escape(origin),
            f"{r.created_at:%Y-%m-%d %H:%M}",
            _macro_f1(r.metrics),
            escape(r.note or ""),
            style=style,
        )
    out_console.print(table)


@models_app.command("show")
@handles_errors
def models_show(
    version: Annotated[str, typer.Argument(help="Version name (see `hrlm models list`).")],
    database_url: DatabaseUrl = None,
    config: Config = None,
    registry_dir: RegistryDir = None,
) -> None:
    """Show a version: folder, model card, origin, metrics, the gate's comparison, report files and stage history."""
    from hrlm.lifecycle import report_files
    from hrlm.model_card import CARD_FILE

    with _registry(config, database_url, registry_dir) as registry:
        info = registry.get(version)
        events = registry.history(version)
        card = info.path / CARD_FILE
        if not card.is_file():  # registered before hrlm wrote cards: write it now
            registry.refresh_cards(version)
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column(overflow="fold")
    facts.add_row("version", escape(info.version))
    facts.add_row("stage", info.stage)
    facts.add_row("folder", escape(str(info.path)))
    facts.add_row("model card", escape(str(card)) if card.is_file() else "- (cannot be written; see the log)")
    facts.add_row("origin", info.origin + (f" (from {escape(info.parent)})" if info.parent else ""))
    facts.add_row("created", f"{info.created_at:%Y-%m-%d %H:%M:%S %Z}")
    if info.note:
        facts.add_row("note", escape(info.note))
    for name, value in (("metrics", info.metrics), ("gate", info.gate)):
        if value:
            facts.add_row(name, escape(json.dumps(value, indent=1, default=str)))
    facts.add_row("reports", escape(", ".join(report_files(info.path)) or "-"))
    out_console.print(facts)
    table = Table(title="stage history")
    for col in ("at", "action", "from", "to", "actor", "reason"):
        table.add_column(col, overflow="fold")
    for e in events:
        table.add_row(
            f"{e.at:%Y-%m-%d %H:%M:%S}",
            e.action,
            e.from_stage or "-",
            e.to_stage,
            escape(e.actor),
            escape(e.reason or ""),
        )
    out_console.print(table)


@models_app.command("register")
@handles_errors
def models_register(
    folder: Annotated[Path, typer.Argument(help="Model folder (the --out of `hrlm train`).")],
    promote: Annotated[bool, typer.Option("--promote", help="Put it in production at once.")] = False,
    note: Annotated[str | None, typer.Option(help="A note kept with the version.")] = None,
    database_url: DatabaseUrl = None,
    config: Config = None,
    registry_dir: RegistryDir = None,
) -> None:
    """Copy a model folder into the registry as a new version (a candidate, or production with --promote)."""
    with _registry(config, database_url, registry_dir) as registry:
        info = registry.register(
            folder, actor=actor(), note=note, stage="production" if promote else "candidate", reason=note
        )
    out_console.print(
        f"registered {escape(info.version)} ({info.stage}) in {escape(str(info.path))}", highlight=False, soft_wrap=True
    )


@models_app.command("promote")
@handles_errors
def models_promote(
    version: Annotated[str, typer.Argument(help="Version to put in production.")],
    reason: Reason = None,
    force: Annotated[bool, typer.Option("--force", help="Promote even a version the gate rejected.")] = False,
    database_url: DatabaseUrl = None,
    config: Config = None,
    registry_dir: RegistryDir = None,
) -> None:
    """Put a version in production; the production version before it is archived (a service follows)."""
    with _registry(config, database_url, registry_dir) as registry:
        _said("promoted", registry.promote(version, actor(), reason, force=force))


@models_app.command("reject")
@handles_errors
def models_reject(
    version: Annotated[str, typer.Argument(help="Candidate version to reject.")],
    reason: Reason = None,
    database_url: DatabaseUrl = None,
    config: Config = None,
    registry_dir: RegistryDir = None,
) -> None:
    """Reject a candidate version; it is kept with its report."""
    with _registry(config, database_url, registry_dir) as registry:
        _said("rejected", registry.reject(version, actor(), reason))


@models_app.command("archive")
@handles_errors
def models_archive(
    version: Annotated[str, typer.Argument(help="Candidate or rejected version to archive.")],
    reason: Reason = None,
    database_url: DatabaseUrl = None,
    config: Config = None,
    registry_dir: RegistryDir = None,
) -> None:
    """Archive a candidate or rejected version (promote it later to bring it back)."""
    with _registry(config, database_url, registry_dir) as registry:
        _said("archived", registry.archive(version, actor(), reason))


@models_app.command("rollback")
@handles_errors
def models_rollback(
    reason: Reason = None,
    database_url: DatabaseUrl = None,
    config: Config = None,
    registry_dir: RegistryDir = None,
) -> None:
    """Archive the production version and bring back the one in production before it (a service follows)."""
    with _registry(config, database_url, registry_dir) as registry:
        before = registry.production()
        info = registry.rollback(actor(), reason)
    was = f" (was {escape(before.version)}, now archived)" if before else ""
    out_console.print(f"rolled back to {escape(info.version)}{was}", highlight=False, soft_wrap=True)


@models_app.command("compare")
@handles_errors
def models_compare(
    a: Annotated[str, typer.Argument(help="The first version (the baseline).")],
    b: Annotated[str, typer.Argument(help="The second version, compared with the first.")],
    holdout: Annotated[
        Path | None, typer.Option(help="Labelled file to measure both on. (default: the holdout_data setting)")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the whole comparison to this JSON file.")
    ] = None,
    show: Annotated[int, typer.Option(help="Disagreements to print (all are in --json, up to 200).")] = 10,
    database_url: DatabaseUrl = None,
    config: Config = None,
    registry_dir: RegistryDir = None,
) -> None:
    """Two versions on the fixed holdout: metrics, per-class F1, and the texts on which they disagree."""
    from hrlm._fs import atomic_file
    from hrlm.lifecycle import Registry
    from hrlm.lifecycle.compare import compare_versions

    flags = {"database_url": database_url, "registry_dir": str(registry_dir) if registry_dir is not None else None}
    with migrated_store(config, **flags) as (settings, engine):
        out = compare_versions(
            Registry(engine, settings.registry_dir), a, b, holdout or settings.holdout_data, threads=settings.threads
        )
    head = Table(title=f"{escape(a)} (a) vs {escape(b)} (b) on {escape(str(out['holdout']))}: {out['n']} texts")
    for col in ("", "a", "b", "b - a"):
        head.add_column(col, justify="right" if col else "left")
    for key in ("accuracy", "macro_f1", "weighted_f1"):
        head.add_row(
            key, f"{out['a']['metrics'][key]:.4f}", f"{out['b']['metrics'][key]:.4f}", f"{out['delta'][key]:+.4f}"
        )
    for label, row in out["per_class"].items():
        if row["a"] is not None and row["b"] is not None:
            head.add_row(
                f"F1 {escape(label)} ({row['support']})", f"{row['a']:.3f}", f"{row['b']:.3f}", f"{row['delta']:+.3f}"
            )
    out_console.print(head)
    out_console.print(
        f"they disagree on {out['disagreements_total']} texts: a right on {out['a_right']}, b right on {out['b_right']}"
    )
    if out["disagreements"] and show > 0:
        table = Table(title="where they disagree")
        for col in ("text", "label", "a", "b"):
            table.add_column(col, overflow="fold")
        for row in out["disagreements"][:show]:
            table.add_row(
                escape(row["text"][:160]),
                escape(row["label"]),
                f"{escape(row['a'])} ({row['a_confidence']:.2f})",
                f"{escape(row['b'])} ({row['b_confidence']:.2f})",
            )
        out_console.print(table)
    if json_out is not None:
        with atomic_file(json_out) as fh:
            fh.write(json.dumps(out, indent=2, default=str) + "\n")
        out_console.print(f"wrote {escape(str(json_out))}")
