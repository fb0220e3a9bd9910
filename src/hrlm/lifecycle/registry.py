"""The model registry: model versions, their stages, promotion and rollback.

A version is a model folder kept under the registry folder (``root/<version>``) and a row of
``model_versions``. Every stage change appends a row to ``model_stage_events`` and one to the
audit log, in the same transaction as the change. The stages and the moves between them::

    register           -> candidate (or straight to production with stage="production")
    promote            candidate, archived -> production; the production version before -> archived
    promote --force    rejected -> production (overriding the promotion gate)
    reject             candidate -> rejected (kept with its report and the gate's comparison)
    archive            candidate, rejected -> archived
    rollback           production -> archived; the production version before it -> production

Each version's model card (``README.md``, :mod:`hrlm.model_card`) is re-rendered with its stage history
after every change; a card that cannot be written is logged and never undoes the change.

At most one version is in production. Every stage change holds a registry-wide lock (an advisory
lock on PostgreSQL, the database's write lock on SQLite) from its first read to its commit, and a
partial unique index makes the database refuse a second production version whatever a writer does.

Example:
    >>> reg = Registry(make_engine("sqlite:///hrlm.db"), "hrlm-models")  # doctest: +SKIP
    >>> v = reg.register("runs/router", actor="ana", stage="production")  # doctest: +SKIP
    >>> reg.production().version == v.version  # doctest: +SKIP
    True
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from hrlm._fs import atomic_dir, atomic_file
from hrlm.config import check_choice
from hrlm.errors import ConfigError, Conflict
from hrlm.model_card import CARD_FILE, write_model_card
from hrlm.report import REPORT_DIR, report_file, report_files
from hrlm.store.tables import STAGES, model_stage_events, model_versions, utcnow
from hrlm.store.users import audit
from hrlm.store.versions import (
    StageEvent,
    VersionInfo,
    changing,
    log_event,
    production_version,
    reading,
    set_stage,
    to_event,
    to_info,
    version_row,
)
from hrlm.text import check_storable

__all__ = [
    "CARD_FILE",
    "ORIGINS",
    "REPORT_DIR",
    "Registry",
    "StageEvent",
    "VersionInfo",
    "report_file",
    "report_files",
    "version_name",
]

log = logging.getLogger("hrlm.registry")
ORIGINS = ("register", "retrain")
META_FILE = "hrlm.json"  # = hrlm.modeling.META_FILE, without importing torch
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# the stages each move starts from (promote also takes a rejected version when forced)
_FROM = {"promote": ("candidate", "archived"), "reject": ("candidate",), "archive": ("candidate", "rejected")}
_TO = {"promote": "production", "reject": "rejected", "archive": "archived"}


def version_name(folder: Path) -> str:
    """The version a folder registers as: its name and the first 8 hex digits of its ``hrlm.json``'s SHA-256.

    The same name ``hrlm serve --model`` gives the folder (``service.serving.folder_version``), with
    characters other than letters, digits and ``. _ -`` replaced, so that it fits in a URL path.
    """
    digest = hashlib.sha256((folder / META_FILE).read_bytes()).hexdigest()[:8]
    name = _UNSAFE.sub("-", folder.name).strip("-.") or "model"
    return f"{name[:180]}-{digest}"


class Registry:
    """Model versions in a database (the ``model_versions`` table) and a folder (``root``).

    Args:
        engine: an engine of a migrated database (``hrlm db upgrade``).
        root: the folder registered versions are copied into (``registry_dir``, default ``hrlm-models``).
    """

    def __init__(self, engine: Engine, root: str | Path) -> None:
        self.engine = engine
        self.root = Path(root).expanduser().resolve()

    # -- reading ----------------------------------------------------------------------------------

    def versions(self, stage: str | None = None) -> list[VersionInfo]:
        """Every version (or those in ``stage``), newest first."""
        query = select(model_versions).order_by(model_versions.c.created_at.desc(), model_versions.c.id.desc())
        if stage is not None:
            check_choice("stage", stage, STAGES)
            query = query.where(model_versions.c.stage == stage)
        with reading(self.engine) as conn:
            return [to_info(r) for r in conn.execute(query)]

    def get(self, version: str) -> VersionInfo:
        """The version named ``version``; :class:`NotFound` if there is none."""
        with reading(self.engine) as conn:
            return to_info(version_row(conn, version))

    def production(self) -> VersionInfo | None:
        """The version in production, or ``None`` before the first promotion."""
        with reading(self.engine) as conn:
            row = conn.execute(select(model_versions).where(model_versions.c.stage == "production")).first()
        return to_info(row) if row is not None else None

    def history(self, version: str | None = None) -> list[StageEvent]:
        """The stage changes of ``version`` (of every version when ``None``), oldest first."""
        query = select(model_stage_events).order_by(model_stage_events.c.id)
        with reading(self.engine) as conn:
            if version is not None:
                version_row(conn, version)
                query = query.where(model_stage_events.c.version == version)
            return [to_event(r) for r in conn.execute(query)]

    # -- registering ------------------------------------------------------------------------------

    def register(
        self,
        path: str | Path,
        *,
        origin: str = "register",
        parent: str | None = None,
        metrics: dict[str, Any] | None = None,
        gate: dict[str, Any] | None = None,
        note: str | None = None,
        actor: str,
        stage: str = "candidate",
        reason: str | None = None,
    ) -> VersionInfo:
        """Register the model folder ``path`` as a new version, in stage ``candidate`` (or ``production``).

        The folder is copied into ``root/<version>`` (complete or not at all) unless it already lies
        inside ``root``, where it stays. ``metrics`` defaults to the numbers among ``hrlm.json``'s metrics.
        With ``stage="production"`` the version is promoted in the same transaction.

        Raises:
            ModelNotFound, ModelError: ``path`` is not a readable model folder.
            ConfigError: a bad ``origin`` or ``stage``.
            NotFound: ``parent`` is not a registered version.
            Conflict: the folder is already registered.
        """
        from hrlm.modeling import read_meta

        check_choice("origin", origin, ORIGINS)
        check_choice("stage", stage, ("candidate", "production"))
        _check_words(note=note, reason=reason)
        src = Path(path).expanduser().resolve()
        meta = read_meta(src)  # ModelNotFound / ModelError with a clear message
        if metrics is None:
            metrics = {k: v for k, v in meta.metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        base = version_name(src)
        inside = src.is_relative_to(self.root)
        if not inside and self.root.is_relative_to(src):
            raise ConfigError(f"the registry folder {self.root} lies inside {src}; register the model folder itself.")
        with reading(self.engine) as conn:
            if parent is not None:
                version_row(conn, parent)
            if inside:
                known = conn.execute(select(model_versions.c.version).where(model_versions.c.path == str(src))).scalar()
                if known is not None:
                    raise Conflict(f"{src} is already registered as version {known!r}; `hrlm models show {known}`.")
        staging: Path | None = None
        if not inside:
            # a complete copy under a private name first; claiming a version name is then one rename,
            # which fails when another registration holds that name (its folder is not empty)
            staging = self.root / f".staging-{uuid.uuid4().hex}"
            with atomic_dir(staging) as tmp:
                shutil.copytree(src, tmp, dirs_exist_ok=True, symlinks=False)
        try:
            for n in range(1, 101):
                version = base if n == 1 else f"{base}-{n}"
                if self._taken(version):
                    continue
                folder = src if inside else self.root / version
                if staging is not None:
                    try:
                        os.rename(staging, folder)
                    except OSError:
                        if folder.exists():  # another registration claimed this name a moment ago
                            continue
                        raise
                try:
                    replaced = self._insert(version, folder, origin, parent, metrics, gate, note, actor, stage, reason)
                except IntegrityError:  # the name was taken in the database between the check and the insert
                    if staging is not None:
                        os.rename(folder, staging)
                    continue
                except BaseException:
                    if staging is not None:
                        os.rename(folder, staging)  # removed below
                    raise
                staging = None
                self.refresh_cards(version, replaced)
                return self.get(version)
            raise Conflict(f"100 versions named {base}[-n] exist; rename the folder {src} and register it again.")
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)

    def _insert(
        self,
        version: str,
        folder: Path,
        origin: str,
        parent: str | None,
        metrics: dict[str, Any] | None,
        gate: dict[str, Any] | None,
        note: str | None,
        actor: str,
        stage: str,
        reason: str | None,
    ) -> str | None:
        """Insert the version's rows; the version it replaced in production, if promoted at once."""
        row: dict[str, Any] = {"version": version, "path": str(folder), "stage": "candidate", "origin": origin}
        row |= {"parent": parent, "metrics": metrics or None, "gate": gate, "note": note}
        with changing(self.engine) as conn:
            now = utcnow()
            conn.execute(insert(model_versions).values(**row, created_at=now, stage_changed_at=now))
            log_event(conn, version, None, "candidate", "register", actor, reason or note)
            audit(conn, actor, "model.register", version, origin=origin, parent=parent, path=str(folder))
            if stage == "production":
                return self._move(conn, version, "promote", actor, reason)
        return None

    def _taken(self, version: str) -> bool:
        with reading(self.engine) as conn:
            row = conn.execute(select(model_versions.c.id).where(model_versions.c.version == version)).first()
        return row is not None or (self.root / version).exists()

    # -- stage changes ----------------------------------------------------------------------------

    def promote(
        self,
        version: str,
        actor: str,
        reason: str | None = None,
        *,
        gate: dict[str, Any] | None = None,
        force: bool = False,
    ) -> VersionInfo:
        """Put ``version`` in production; the version in production before is archived, in one transaction.

        ``gate`` (the promotion gate's comparison) is stored with the version. A rejected version is
        promoted only with ``force``.

        Raises:
            NotFound: no such version.
            Conflict: the version is in production already, or rejected and ``force`` is not set.
        """
        _check_words(reason=reason)
        with changing(self.engine) as conn:
            previous = self._move(conn, version, "promote", actor, reason, gate=gate, force=force)
        self.refresh_cards(version, previous)
        return self.get(version)

    def reject(
        self, version: str, actor: str, reason: str | None = None, *, gate: dict[str, Any] | None = None
    ) -> VersionInfo:
        """Mark the candidate ``version`` rejected, keeping its folder, report and ``gate`` comparison.

        Raises:
            NotFound: no such version.
            Conflict: the version is not a candidate.
        """
        _check_words(reason=reason)
        with changing(self.engine) as conn:
            self._move(conn, version, "reject", actor, reason, gate=gate)
        self.refresh_cards(version)
        return self.get(version)

    def archive(self, version: str, actor: str, reason: str | None = None) -> VersionInfo:
        """Archive a candidate or rejected ``version`` (a production version leaves by promote or rollback).

        Raises:
            NotFound: no such version.
            Conflict: the version is in production or archived already.
        """
        _check_words(reason=reason)
        with changing(self.engine) as conn:
            self._move(conn, version, "archive", actor, reason)
        self.refresh_cards(version)
        return self.get(version)

    def rollback(self, actor: str, reason: str | None = None) -> VersionInfo:
        """Archive the production version and bring back the one that was in production before it.

        "Before it" follows the stage history, newest first, skipping the versions whose last exit from
        production was itself a rollback: rolling back twice goes two versions back, not back and forth.

        Returns:
            The version now in production.

        Raises:
            Conflict: nothing is in production, or no earlier production version is left to go back to.
        """
        _check_words(reason=reason)
        with changing(self.engine) as conn:
            current = production_version(conn)
            if current is None:
                raise Conflict("no version is in production, so there is nothing to roll back; promote one first.")
            events = conn.execute(select(model_stage_events).order_by(model_stage_events.c.id.desc())).all()
            stages = {v: st for v, st in conn.execute(select(model_versions.c.version, model_versions.c.stage))}
            last_exit: dict[str, str] = {}
            for e in events:
                if e.from_stage == "production":
                    last_exit.setdefault(e.version, e.action)
            target = next(
                (
                    e.version
                    for e in events
                    if e.to_stage == "production"
                    and e.version != current
                    and last_exit.get(e.version) != "rollback"
                    and stages.get(e.version) == "archived"
                ),
                None,
            )
            if target is None:
                raise Conflict(
                    f"no earlier production version to roll back to from {current!r} (versions rolled back from are "
                    "skipped); promote a version by name instead: `hrlm models promote VERSION`."
                )
            now = utcnow()
            # the old one out first: the partial unique index allows one production row at any moment
            set_stage(conn, current, "archived", now)
            log_event(conn, current, "production", "archived", "rollback", actor, reason)
            set_stage(conn, target, "production", now)
            log_event(conn, target, "archived", "production", "rollback", actor, reason)
            audit(conn, actor, "model.rollback", target, previous=current, reason=reason)
        self.refresh_cards(target, current)
        return self.get(target)

    def annotate(
        self,
        version: str,
        actor: str,
        *,
        metrics: dict[str, Any] | None = None,
        gate: dict[str, Any] | None = None,
        note: str | None = None,
    ) -> VersionInfo:
        """Record metrics, the gate's comparison or a note on ``version`` without changing its stage."""
        _check_words(note=note)
        values = {k: v for k, v in {"metrics": metrics, "gate": gate, "note": note}.items() if v is not None}
        with changing(self.engine) as conn:
            version_row(conn, version)
            if values:
                conn.execute(update(model_versions).where(model_versions.c.version == version).values(**values))
                audit(conn, actor, "model.annotate", version, fields=sorted(values))
        if values:
            self.refresh_cards(version)
        return self.get(version)

    def add_report(self, version: str, name: str, content: str | bytes) -> Path:
        """Write the file ``name`` (``gate.md``) into the version's ``report/`` folder, atomically.

        Raises:
            ConfigError: ``name`` is not a plain file name.
        """
        if not name or name != Path(name).name or name.startswith("."):
            raise ConfigError(f"report file name {name!r} must be a plain file name such as gate.md.")
        path = self.get(version).path / REPORT_DIR / name
        with atomic_file(path, "wb" if isinstance(content, bytes) else "w") as fh:
            fh.write(content)
        self.refresh_cards(version)  # an audit.json added here shows in the card
        return path

    def write_card(self, version: str) -> Path:
        """Render ``version``'s model card with its registry facts and stage history into its folder.

        Returns:
            The card's path (``<folder>/README.md``).

        Raises:
            NotFound: no such version.
            ModelNotFound, ModelError: its folder is gone or holds no ``hrlm.json``.

        Example:
            >>> registry.write_card("router-1a2b3c4d")  # doctest: +SKIP
            PosixPath('hrlm-models/router-1a2b3c4d/README.md')
        """
        info = self.get(version)
        events = [e.to_dict() for e in self.history(version)]
        return write_model_card(info.path, history=events, version=info.to_dict())

    def refresh_cards(self, *versions: str | None) -> None:
        """Re-render the cards of ``versions`` (``None`` entries skipped); a failure is logged, never raised.

        A stage change is stored before its cards are written: a full disk or a read-only folder must
        not undo or fail it.
        """
        for version in dict.fromkeys(v for v in versions if v):
            try:
                self.write_card(version)
            except Exception as exc:  # the change stands; the card is re-rendered at the next change
                log.warning("could not write the model card of %s: %s: %s", version, type(exc).__name__, exc)

    # -- internals --------------------------------------------------------------------------------

    def _move(
        self,
        conn: Connection,
        version: str,
        action: str,
        actor: str,
        reason: str | None,
        *,
        gate: dict[str, Any] | None = None,
        force: bool = False,
    ) -> str | None:
        """Move ``version`` by ``action`` (promote, reject, archive); the caller holds the lock.

        Returns:
            The version that left production for it (a promotion), else ``None``.
        """
        row = version_row(conn, version)
        target = _TO[action]
        allowed = _FROM[action] + (("rejected",) if action == "promote" and force else ())
        if row.stage not in allowed:
            raise Conflict(_refusal(version, row.stage, action))
        now = utcnow()
        previous = None
        if target == "production":
            previous = production_version(conn)
            if previous is not None:
                set_stage(conn, previous, "archived", now)
                log_event(conn, previous, "production", "archived", action, actor, f"replaced by {version}")
        set_stage(conn, version, target, now, gate=gate)
        log_event(conn, version, row.stage, target, action, actor, reason)
        detail: dict[str, Any] = {"from_stage": row.stage, "reason": reason}
        if previous is not None:
            detail["previous"] = previous
        if force:
            detail["force"] = True
        audit(conn, actor, f"model.{action}", version, **detail)
        return previous


def _check_words(**words: str | None) -> None:
    """Refuse a note or reason a database cannot store (NUL, a lone surrogate), naming it."""
    for field, value in words.items():
        if value is not None:
            check_storable(field, value)


def _refusal(version: str, stage: str, action: str) -> str:
    if stage == _TO[action]:
        return f"version {version!r} is {stage} already."
    if stage == "production":
        return (
            f"version {version!r} is in production; it leaves production when another version is promoted "
            "(`hrlm models promote VERSION`) or by `hrlm models rollback`."
        )
    if action == "promote" and stage == "rejected":
        return (
            f"version {version!r} was rejected (see its gate report: `hrlm models show {version}`); "
            "promote it anyway with --force (force=True), or retrain."
        )
    allowed = " or ".join(_FROM[action])
    return f"cannot {action} version {version!r}: it is {stage}; only a {allowed} version can be {_TO[action]}."
