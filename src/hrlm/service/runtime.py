"""The running service: database, model, micro-batcher and recorder, and the operations routes call.

Routes stay thin: they validate, call one method of :class:`Service`, and return a schema.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from hrlm.errors import RequestTimeout
from hrlm.lifecycle import JobManager, Registry
from hrlm.pii import Redactor
from hrlm.review import ReviewPolicy
from hrlm.service.auth import Authenticator, RateLimiter
from hrlm.service.batching import MicroBatcher, PendingRequest
from hrlm.service.metrics import Metrics
from hrlm.service.monitor import EvaluationScheduler, HealthMonitor
from hrlm.service.queue_filler import QueueFiller
from hrlm.service.recorder import Recorder
from hrlm.service.retention import RetentionPurger
from hrlm.service.served_model import (
    FolderSource,
    LoadedModel,
    ModelRef,
    ModelSource,
    RegistryFollower,
    RegistrySource,
)
from hrlm.service.settings import ServiceSettings
from hrlm.store import db
from hrlm.store.tables import utcnow
from hrlm.store.users import Principal

EXPLAIN_CACHE = 512  # explanations of review items kept (per model version, item and label)
log = logging.getLogger("hrlm.service")


@dataclass
class Answer:
    """What one request gets back from the model and the store."""

    predictions: list[Any]  # hrlm.inference.predictor.Prediction
    model_version: str
    stored: bool
    latency_ms: float


@dataclass
class _RequestInfo:
    request_id: str
    user_id: int | None
    client_request_id: str | None = None


def default_source(settings: ServiceSettings, engine: Engine) -> ModelSource:
    """The source ``settings`` name: the ``model`` folder, else the production version of the registry.

    ``engine`` is the (migrated) database the registry lives in. Asking the registry source for its
    current version raises :class:`ConfigError` when nothing is in production.
    """
    if settings.model:
        return FolderSource(Path(settings.model))
    return RegistrySource(Registry(engine, settings.registry_dir))


class Service:
    """Everything one ``hrlm serve`` process holds.

    Args:
        settings: the service settings.
        source: where models come from (default: ``settings.model`` as a :class:`FolderSource`).
        engine: a database engine (default: one for ``settings.database_url``).
    """

    def __init__(
        self, settings: ServiceSettings, *, source: ModelSource | None = None, engine: Engine | None = None
    ) -> None:
        self.settings = settings
        self.source = source
        self.engine = engine
        self.metrics = Metrics()
        self.limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
        self.model: LoadedModel | None = None
        self.started = False
        self._swap_lock = asyncio.Lock()
        # explanations of review items: (model version, item, label) -> explanations, least recently used first out
        self._explained: collections.OrderedDict[tuple[str, str, str | None], list[Any]] = collections.OrderedDict()

    async def start(self) -> None:
        """Connect and migrate the database, load the model, start the batcher and the recorder."""
        s = self.settings
        if self.engine is None:
            self.engine = db.make_engine(s.database_url, sqlite_synchronous=s.sqlite_synchronous)
        if s.migrate:
            await asyncio.to_thread(db.upgrade, self.engine)
        if self.source is None:
            self.source = default_source(s, self.engine)
        self.auth = Authenticator(self.engine, s.auth_cache_s)
        try:
            self.model = await asyncio.to_thread(self._load, self.source.current())
        except BaseException:  # nothing to serve (an empty registry, a damaged folder): release the database
            self.engine.dispose()
            raise
        self.metrics.set_model(self.model.version)
        self.recorder = Recorder(
            self.engine, self.metrics, store_text=s.store_text, redactor=Redactor(extra=s.pii_patterns)
        )
        self.recorder.start()
        # new predictions are sorted into the review queue every review_fill_s (POST /v1/review/fill: now)
        self.filler = QueueFiller(self.engine, ReviewPolicy.from_settings(s), s.review_fill_s)
        self.filler.start()
        # stored texts and notes past retention_days are removed once a day, the first time soon after start
        self.purger = RetentionPurger(self.engine, s.retention_days)
        self.purger.start()
        # retrain jobs: a thread of this process (job_runner=inprocess) or `hrlm worker` through Redis; a job
        # that promoted a version reloads the model at once (the registry follower would, within registry_poll_s)
        loop = asyncio.get_running_loop()
        self.jobs = JobManager(
            self.engine, s.lifecycle(), on_finished=lambda *_: asyncio.run_coroutine_threadsafe(self.reload(), loop)
        )
        self.jobs.start()
        # the health monitor (alerts every monitor_every_s) and the holdout evaluation (a job every evaluate_every_s)
        self.monitor = HealthMonitor(self, s.monitor_every_s)
        self.monitor.start()
        self.evaluator = EvaluationScheduler(self, s.evaluate_every_s)
        self.evaluator.start()
        self.batcher = MicroBatcher(
            self._infer,
            self._finish,
            max_batch=s.max_batch,
            max_wait_s=s.max_wait_ms / 1000.0,
            max_queue=s.max_queue,
            enabled=s.batching,
            metrics=self.metrics,
        )
        self.batcher.start()
        # a promotion or rollback from another process (the CLI, a worker) takes effect within registry_poll_s
        self.follower = RegistryFollower(self.reload, s.registry_poll_s if self.registry is not None else 0.0)
        self.follower.start()
        self.started = True
        log.info("serving %s from %s on database %s", self.model.version, self.model.ref.path, db.describe(self.engine))

    async def stop(self) -> None:
        """Answer and store what is in flight, then release the model and the database."""
        if not self.started:
            return
        self.started = False
        await self.follower.stop()
        await self.batcher.close()
        await self.recorder.close()
        await self.filler.stop()
        await self.purger.stop()
        await self.monitor.stop()
        await self.evaluator.stop()
        await asyncio.to_thread(self.jobs.close)
        if self.engine is not None:
            self.engine.dispose()

    def _load(self, ref: ModelRef) -> LoadedModel:
        s = self.settings
        return LoadedModel.load(ref, backend=s.backend, threads=s.threads, max_tokens=s.max_tokens)

    # -- the model ------------------------------------------------------------------------------

    def _infer(self, texts: list[str]) -> tuple[LoadedModel, list[Any]]:
        # Runs on the model thread. The model is read once per batch: a swap takes effect between batches.
        model = self.model
        assert model is not None
        return model, model.predictor.predict(texts)

    async def _finish(
        self, pending: list[PendingRequest], result: tuple[LoadedModel, list[Any]], seconds: float
    ) -> None:
        model, preds = result
        now = time.perf_counter()
        created = utcnow()
        batch = len(preds)
        rows: list[dict[str, Any]] = []
        answers: list[tuple[PendingRequest, list[Any], float]] = []
        i = 0
        for request in pending:
            mine = preds[i : i + len(request.texts)]
            i += len(request.texts)
            latency_ms = (now - request.enqueued) * 1000.0
            answers.append((request, mine, latency_ms))
            info: _RequestInfo = request.info
            for pos, (text, pred) in enumerate(zip(request.texts, mine, strict=True)):
                label = pred.label
                rows.append(
                    {
                        "request_id": info.request_id,
                        "client_request_id": info.client_request_id,
                        "position": pos,
                        "created_at": created,
                        "user_id": info.user_id,
                        "model_version": model.version,
                        "text": text,
                        "label": "|".join(label) if isinstance(label, list) else str(label),
                        "confidence": float(pred.score),
                        "output": pred.to_dict(),
                        "latency_ms": round(latency_ms, 3),
                        "batch_size": batch,
                    }
                )
        self.metrics.predictions.labels(model_version=model.version).inc(batch)
        failed = await self.recorder.submit(rows)  # the requests whose own records were not all stored
        for request, mine, latency_ms in answers:
            if not request.future.done():
                stored = request.info.request_id not in failed
                request.future.set_result(Answer(mine, model.version, stored, round(latency_ms, 3)))

    async def predict(
        self, texts: list[str], *, request_id: str, principal: Principal | None, client_request_id: str | None = None
    ) -> Answer:
        """Predict ``texts`` in the next micro-batch; return once the records are stored (or failed to be).

        ``request_id`` is the server's own id of the request (unique); ``client_request_id`` the
        ``X-Request-ID`` the client sent, stored beside it.

        Raises:
            Overloaded: too many texts are waiting (503).
            RequestTimeout: no answer within ``request_timeout_s`` (504).
        """
        info = _RequestInfo(request_id, principal.user_id if principal else None, client_request_id)
        future = self.batcher.submit(texts, info)
        try:
            return await asyncio.wait_for(future, self.settings.request_timeout_s)
        except TimeoutError:
            raise RequestTimeout(
                f"no answer within request_timeout_s = {self.settings.request_timeout_s:g} s "
                f"({self.batcher.depth} texts are waiting); retry, or send fewer or shorter texts."
            ) from None

    async def predict_unrecorded(self, texts: list[str]) -> tuple[str, list[Any]]:
        """The served model's version and predictions of ``texts``, made on the model thread and stored nowhere.

        For another tool's own labelling traffic (Label Studio's pre-annotations): not the service's
        clients' predictions, so neither the prediction store, the review queue nor the monitor sees it.
        """
        model, preds = await self.batcher.call(self._infer, list(texts))
        return model.version, preds

    async def explain(
        self, texts: list[str], *, label: str | None = None, key: str | None = None
    ) -> tuple[str, list[Any]]:
        """The served model's version and word attributions of ``texts`` (for ``label``, else the predicted one).

        Integrated gradients on the model thread (:func:`hrlm.inference.explain.explain`), with
        ``explain_steps`` path points and at most ``explain_max_windows`` windows a text; ``key``
        (a review item) caches the result per model version and label. Bounded by ``request_timeout_s``.

        Raises:
            RequestTimeout: the attributions took longer than ``request_timeout_s`` (504).
        """
        from hrlm.inference.explain import explain

        model = self.model
        assert model is not None
        cache_key = (model.version, key, label) if key is not None else None
        if cache_key is not None and cache_key in self._explained:
            self._explained.move_to_end(cache_key)
            return model.version, self._explained[cache_key]
        s = self.settings

        def run() -> list[Any]:
            return explain(
                model.predictor, texts, label=label, steps=s.explain_steps, max_windows=s.explain_max_windows
            )

        try:
            found = await asyncio.wait_for(self.batcher.call(run), s.request_timeout_s)
        except TimeoutError:
            raise RequestTimeout(
                f"the explanation took longer than request_timeout_s = {s.request_timeout_s:g} s; "
                "explain fewer or shorter texts, or lower explain_steps."
            ) from None
        if cache_key is not None:
            self._explained[cache_key] = found
            while len(self._explained) > EXPLAIN_CACHE:
                self._explained.popitem(last=False)
        return model.version, found

    # -- swapping models ------------------------------------------------------------------------

    @property
    def registry(self) -> Registry | None:
        """The model registry this service follows; ``None`` when it serves a plain ``--model`` folder."""
        return self.source.registry if isinstance(self.source, RegistrySource) else None

    async def swap(self, ref: ModelRef) -> LoadedModel:
        """Load ``ref`` beside the current model, then answer with it from the next batch on.

        Requests already in a batch finish on the old model (and report its version); none fails.
        The old model is freed when its last batch is done.
        """
        async with self._swap_lock:
            return await self._swap(ref)

    async def _swap(self, ref: ModelRef) -> LoadedModel:
        new = await asyncio.to_thread(self._load, ref)
        old, self.model = self.model, new
        self.metrics.set_model(new.version)
        self.metrics.model_swaps.inc()
        log.info("swapped model %s -> %s", old.version if old else None, new.version)
        return new

    async def reload(self) -> bool:
        """Swap in the source's current version if it changed (what promotion calls); True if it did.

        The check and the swap hold one lock: the registry follower and a promotion that reload at
        the same moment load the new version once.
        """
        assert self.source is not None
        async with self._swap_lock:
            ref = await asyncio.to_thread(self.source.current)
            if self.model is not None and ref.version == self.model.version:
                return False
            await self._swap(ref)
            return True

    # -- health ---------------------------------------------------------------------------------

    async def readiness(self) -> dict[str, Any]:
        """Whether the model is loaded and the database answers; raises :class:`StoreError` if it does not."""
        assert self.engine is not None
        await asyncio.to_thread(db.ping, self.engine)
        return {
            "status": "ready" if self.started and self.model is not None else "starting",
            "model_version": self.model.version if self.model else None,
            "queue_depth": self.batcher.depth if self.started else 0,
        }
