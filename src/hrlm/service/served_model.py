"""Which model the service answers with, and the seam a model registry plugs into.

A :class:`ModelSource` says which model version is current and which versions exist. Two sources
exist: :class:`FolderSource` (``hrlm serve --model DIR``) and :class:`RegistrySource`, whose current
version is the registry's production version. Promotion through the API calls
:meth:`Service.reload` (in ``core.py``), which loads the new version beside the old one and swaps it
in between two batches; a :class:`RegistryFollower` calls it every ``registry_poll_s`` seconds too, so
a promotion or rollback made from the CLI, in another process, takes effect within that time.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hrlm.errors import ConfigError, NotFound
from hrlm.lifecycle import Registry
from hrlm.service.periodic import Periodic

log = logging.getLogger("hrlm.service")


@dataclass(frozen=True)
class ModelRef:
    """A model version: its name, its folder, and its stage where a registry keeps stages."""

    version: str
    path: Path
    stage: str | None = None


class ModelSource(Protocol):
    """Where the service finds models: a single folder today, the registry later."""

    def current(self) -> ModelRef:
        """The version the service should answer with."""
        ...

    def versions(self) -> list[ModelRef]:
        """Every version a client may ask about."""
        ...


def folder_version(path: Path) -> str:
    """A folder's version: its name and the first 8 hex digits of the SHA-256 of its ``hrlm.json``.

    Retraining into the same folder changes the metadata (metrics, fingerprint), so the version
    changes with it.
    """
    from hrlm.modeling import META_FILE, read_meta

    read_meta(path)  # raises ModelNotFound / ModelError with a clear message
    digest = hashlib.sha256((path / META_FILE).read_bytes()).hexdigest()[:8]
    return f"{path.name}-{digest}"


@dataclass
class FolderSource:
    """One model folder, served as it is (``hrlm serve --model DIR``)."""

    path: Path
    _ref: ModelRef | None = field(default=None, repr=False)

    def current(self) -> ModelRef:
        path = Path(self.path).resolve()
        version = folder_version(path)
        if self._ref is None or self._ref.version != version:
            self._ref = ModelRef(version, path, stage="serving")
        return self._ref

    def versions(self) -> list[ModelRef]:
        return [self.current()]


@dataclass
class RegistrySource:
    """The model registry's versions; the current one is its production version (``hrlm serve`` without --model)."""

    registry: Registry

    def current(self) -> ModelRef:
        info = self.registry.production()
        if info is None:
            raise ConfigError(
                f"no model to serve: the model registry ({self.registry.root}) has no production version; "
                "register and promote one with `hrlm models register DIR --promote`, or pass --model DIR."
            )
        return ModelRef(info.version, info.path, stage=info.stage)

    def versions(self) -> list[ModelRef]:
        refs = []
        for info in self.registry.versions():
            if (info.path / "hrlm.json").is_file():
                refs.append(ModelRef(info.version, info.path, stage=info.stage))
            else:  # deleted by hand: listing it would make every GET /v1/models fail
                log.warning("model version %s: its folder %s is gone; skipping it", info.version, info.path)
        return refs


class RegistryFollower(Periodic):
    """Calls ``reload`` every ``every`` seconds, so that the service follows the registry's production stage.

    A failed check (the database away, the new version's folder damaged) is logged once and retried;
    the loaded model keeps answering meanwhile.
    """

    name = "hrlm-registry-follower"

    def __init__(self, reload: Callable[[], Awaitable[bool]], every: float) -> None:
        super().__init__(every)
        self.reload = reload

    async def tick(self) -> None:
        await self.reload()

    def failure(self, exc: Exception) -> str:
        return f"cannot follow the model registry: {exc}; still serving the loaded model"


def find_version(source: ModelSource, version: str) -> ModelRef:
    """The version named ``version``, or :class:`NotFound`."""
    refs = source.versions()
    for ref in refs:
        if ref.version == version:
            return ref
    raise NotFound(f"no model version {quoted(version)}; GET /v1/models lists {[r.version for r in refs]}.")


def quoted(sent: str, limit: int = 40) -> str:
    """What a client sent, quoted for an error message: at most ``limit`` characters, then an ellipsis.

    Example:
        >>> quoted("a" * 100, limit=3)
        "'aaa…'"
    """
    return repr(sent if len(sent) <= limit else sent[:limit] + "…")


@dataclass
class LoadedModel:
    """A model version loaded into a Predictor and ready to answer."""

    ref: ModelRef
    predictor: Any  # hrlm.inference.predictor.Predictor; Any keeps torch out of this module's import

    @property
    def version(self) -> str:
        return self.ref.version

    @classmethod
    def load(
        cls, ref: ModelRef, *, backend: str = "auto", threads: int | None = None, max_tokens: int | None = None
    ) -> LoadedModel:
        """Load ``ref`` and run one text through it, so that the first request is not the slow one.

        ``max_tokens`` is the Predictor's token budget per forward pass (``None``: as calibrated on this
        machine). A request never waits for a calibration: the Predictor only reads the cached one, and
        the first load of a model shape on a machine calibrates on the packaged sample tickets, texts
        like those an HR service scores (about ten seconds for MiniLM on 2 cores, once; see
        :mod:`hrlm.inference.calibrate`).
        """
        from hrlm.inference import Predictor

        predictor = Predictor.from_dir(
            ref.path, backend=backend, threads=threads, max_tokens=max_tokens, calibrate="cached"
        )
        if max_tokens is None:
            predictor.calibrate_once(sample_texts())
        predictor.predict(["warm up"])
        return cls(ref, predictor)


def sample_texts() -> list[str]:
    """The packaged sample tickets' texts: what the service calibrates its batching on."""
    import csv
    from importlib import resources

    with resources.files("hrlm").joinpath("samples", "helpdesk_tickets.csv").open(encoding="utf-8") as fh:
        return [row["text"] for row in csv.DictReader(fh) if row.get("text")]


def describe(ref: ModelRef, *, serving: str | None = None) -> dict[str, Any]:
    """What ``GET /v1/models`` says about a version: tasks, labels, headline metrics, encoder."""
    from hrlm.modeling import read_meta

    meta = read_meta(ref.path)
    metrics = {k: v for k, v in (meta.metrics or {}).items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return {
        "version": ref.version,
        "stage": ref.stage,
        "serving": ref.version == serving,
        "tasks": [{"name": t.name, "labels": list(t.labels), "multi_label": bool(t.multi_label)} for t in meta.tasks],
        "metrics": metrics,
        "base_encoder": Path(meta.base_encoder).name if meta.base_encoder else None,
        "max_length": meta.max_length,
        "hrlm_version": meta.hrlm_version,
    }
