"""hrlm as a Label Studio ML backend: pre-annotations from the served model, annotations as feedback, training.

Label Studio connects to ``http(s)://HOST/labelstudio`` (Model settings of a project, "Connect
model") and calls:

- ``GET /labelstudio/health``: is the backend up (and which model version answers);
- ``POST /labelstudio/setup``: the project's labelling config, checked against the model's labels;
- ``POST /labelstudio/predict``: tasks in, one pre-annotation per task out (the label as a choice,
  the model's confidence as the score). Made on the model thread and stored nowhere: labelling
  traffic is not the service's clients' traffic (the review queue and the monitor do not see it);
- ``POST /labelstudio/webhook``: ``ANNOTATION_CREATED``/``ANNOTATIONS_CREATED``/``ANNOTATION_UPDATED``
  become review answers (:func:`hrlm.review.record_external`; redacted as ``store_text`` says),
  ``ANNOTATIONS_DELETED`` withdraws them, ``START_TRAINING`` queues a retrain (admin tokens only)
  that the promotion gate decides as always; other events are acknowledged and ignored;
- ``POST /labelstudio/train``: the older form of "Start training" (Label Studio without its
  webhook-training feature flag), also queueing a retrain.

Behind hrlm's tokens: Label Studio sends HTTP Basic credentials (the ML backend's "Basic auth"
user and password; the password is an hrlm token of a reviewer or an admin), or a bearer token
header set on its webhook. No ``from __future__ import annotations`` here: FastAPI reads the types.
"""

import asyncio
import logging
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request

from hrlm.errors import Conflict, DataError, Forbidden
from hrlm.review import ReviewPolicy, record_external, withdraw_external
from hrlm.service.auth import require
from hrlm.service.labelstudio import SOURCE, LabelConfig, annotator, parse_config, project_id
from hrlm.service.routes.common import error_responses
from hrlm.service.schemas.predict import STORABLE
from hrlm.store.users import Principal
from hrlm.text import check_storable

log = logging.getLogger("hrlm.service")

ROLES = ("reviewer", "admin")
# Label Studio's bodies are its own JSON; their keys are checked storable here, their values where used
LSBody = dict[Annotated[str, STORABLE], Any]
CREATED = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED")
DELETED = ("ANNOTATIONS_DELETED", "ANNOTATION_DELETED")
MAX_TASKS = 10_000


def build_labelstudio_router() -> APIRouter:
    """The routes Label Studio's ML backend protocol calls, under ``/labelstudio``."""
    router = APIRouter(prefix="/labelstudio", tags=["labelstudio"])
    configs: dict[str, LabelConfig] = {}  # the last config seen per Label Studio project

    def config_of(project: Any, xml: Any) -> LabelConfig | None:
        key = project_id(project)
        if isinstance(xml, str) and xml.strip():
            configs[key] = parse_config(xml)
        return configs.get(key)

    @router.get("/health", responses=error_responses(401, 403), summary="Label Studio: is the backend up")
    @router.get("", include_in_schema=False)
    async def health(request: Request, _: Principal = Depends(require(*ROLES))) -> dict[str, Any]:
        """``UP``, and the model version that answers."""
        model = request.app.state.service.model
        return {"status": "UP", "model_class": "hrlm", "model_version": model.version if model else None}

    @router.post("/setup", responses=error_responses(401, 403, 422), summary="Label Studio: connect a project")
    async def setup(
        request: Request,
        body: LSBody = Body(..., description="Label Studio's setup request: project, schema, ..."),
        _: Principal = Depends(require(*ROLES)),
    ) -> dict[str, Any]:
        """Check the project's labelling config against the served model's labels; answer the model version."""
        service = request.app.state.service
        cfg = config_of(body.get("project"), body.get("schema"))
        if cfg is None:
            raise DataError("the setup request has no schema (the project's labelling config); connect again.")
        unknown = cfg.check_labels(service.model.predictor.labels)
        if unknown:
            log.warning("Label Studio project %s has choices the model does not know: %s", body.get("project"), unknown)
        return {"model_version": service.model.version}

    @router.post("/predict", responses=error_responses(401, 403, 422, 503), summary="Label Studio: pre-annotate tasks")
    async def predict(
        request: Request,
        body: LSBody = Body(..., description="Label Studio's predict request: tasks, project, label_config."),
        _: Principal = Depends(require(*ROLES)),
    ) -> dict[str, Any]:
        """One prediction per task, in Label Studio's result format (the label as a choice, the confidence as score)."""
        service = request.app.state.service
        cfg = config_of(body.get("project"), body.get("label_config"))
        if cfg is None:
            raise DataError("the predict request has no label_config; connect the project again (setup).")
        tasks = body.get("tasks") or []
        if not isinstance(tasks, list) or len(tasks) > MAX_TASKS:
            raise DataError(f"tasks must be a list of at most {MAX_TASKS} tasks; send fewer at a time.")
        texts = [cfg.text_of(task) for task in tasks]
        results: list[dict[str, Any]] = []
        step = max(service.settings.max_batch, 1)
        for start in range(0, len(texts), step):
            version, preds = await service.predict_unrecorded(texts[start : start + step])
            results.extend(cfg.result(p.label, p.score, version) for p in preds)
        return {"results": results}

    @router.post(
        "/webhook", status_code=201, responses=error_responses(401, 403, 409, 422), summary="Label Studio: events"
    )
    async def webhook(
        request: Request,
        body: LSBody = Body(..., description="A Label Studio webhook event: action, project, task, annotation."),
        principal: Principal = Depends(require(*ROLES)),
    ) -> dict[str, Any]:
        """Annotations become review answers; deleted annotations are withdrawn; START_TRAINING queues a retrain."""
        action = check_storable("action", str(body.get("action") or ""))
        if action == "START_TRAINING":
            return {"status": "ok", "result": await _queue_retrain(request, principal)}
        if action in DELETED:
            ids = [
                _external_id(body.get("project"), a) for a in _listed(body.get("annotations") or body.get("annotation"))
            ]
            n = await asyncio.to_thread(
                withdraw_external,
                request.app.state.service.engine,
                source=SOURCE,
                external_ids=ids,
                actor=f"{SOURCE}:{principal.name}",
            )
            return {"status": "ok", "result": {"withdrawn": n}}
        if action not in CREATED:
            return {"status": "Unknown event", "action": action[:40]}
        project = body.get("project")
        cfg = config_of(project, project.get("label_config") if isinstance(project, Mapping) else None)
        pairs = list(zip(_listed(body.get("annotation")), _listed(body.get("task")), strict=False))
        return {"status": "ok", "result": [await _record(request, cfg, project, a, t) for a, t in pairs]}

    @router.post("/train", status_code=201, responses=error_responses(401, 403, 409), summary="Label Studio: train")
    async def train(
        request: Request,
        body: LSBody = Body(default_factory=dict, description="Label Studio's train request (ignored)."),
        principal: Principal = Depends(require(*ROLES)),
    ) -> dict[str, Any]:
        """Label Studio's "Start training" without its webhook: queue a retrain from hrlm's feedback."""
        return {"status": "ok", "result": await _queue_retrain(request, principal)}

    return router


async def _queue_retrain(request: Request, principal: Principal) -> dict[str, Any]:
    """Queue a retrain job (as ``POST /v1/retrain`` does); the gate decides the candidate."""
    if principal.role != "admin":
        raise Forbidden(
            f"user {principal.name!r} has role {principal.role!r}; Label Studio's Start training queues a retrain, "
            "which needs an admin's token in the ML backend's connection (`hrlm users add NAME --role admin`)."
        )
    jobs = request.app.state.service.jobs
    try:
        job = await asyncio.to_thread(jobs.submit, "retrain", actor=f"{SOURCE}:{principal.name}", params={})
    except Conflict as exc:
        raise Conflict(f"{exc} Label Studio's Start training waits for it.") from None
    return {"job_id": job["id"], "state": job["state"], "poll": f"/v1/jobs/{job['id']}"}


async def _record(
    request: Request, cfg: LabelConfig | None, project: Any, annotation: Any, task: Any
) -> dict[str, Any]:
    """Store one annotation as a review answer (an earlier version of it is withdrawn)."""
    service = request.app.state.service
    if not isinstance(annotation, Mapping) or not isinstance(task, Mapping):
        raise DataError("the webhook event has no annotation and task objects; send_payload must be on.")
    external_id = _external_id(project, annotation)
    if annotation.get("was_cancelled"):
        n = await asyncio.to_thread(
            withdraw_external, service.engine, source=SOURCE, external_ids=[external_id], actor=SOURCE
        )
        return {"annotation": annotation.get("id"), "status": "skipped", "withdrawn": n}
    if service.settings.store_text == "none":
        return {"annotation": annotation.get("id"), "status": "ignored", "reason": "store_text = none: no text is kept"}
    labels = (cfg.labels_of(annotation) if cfg else _choices(annotation)) or []
    if not labels:
        return {"annotation": annotation.get("id"), "status": "ignored", "reason": "no choice in the annotation"}
    text = cfg.text_of(task) if cfg else _only_text(task)
    version, preds = await service.predict_unrecorded([text])
    pred = preds[0]
    known = set(service.model.predictor.labels)
    unknown = [label for label in labels if label not in known]
    if unknown:
        raise DataError(
            f"annotation {annotation.get('id')} chose {unknown}, which the served model does not know; "
            "add the label by retraining with examples of it, or fix the labelling config's choices."
        )
    stored = text if service.settings.store_text == "raw" else service.recorder.redactor.redact(text)
    suggestion = "|".join(pred.label) if isinstance(pred.label, list) else str(pred.label)
    out = await asyncio.to_thread(
        record_external,
        service.engine,
        source=SOURCE,
        external_id=external_id,
        text=stored,
        label="|".join(sorted(labels)) if len(labels) > 1 else labels[0],
        annotator=annotator(annotation),
        model_version=version,
        suggestion=suggestion,
        output=pred.to_dict(),
        policy=ReviewPolicy.from_settings(service.settings),
    )
    return {"annotation": annotation.get("id"), "status": "recorded", **out}


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value] if value is not None else []


def _external_id(project: Any, annotation: Any) -> str:
    ident = annotation.get("id") if isinstance(annotation, Mapping) else annotation
    return check_storable("annotation id", f"{project_id(project)}:annotation:{ident}"[:200])


def _choices(annotation: Mapping[str, Any]) -> list[str]:
    """The choices of an annotation when the project's config is unknown (any ``choices`` region)."""
    out: list[str] = []
    for region in annotation.get("result") or []:
        value = region.get("value") if isinstance(region, Mapping) else None
        if isinstance(value, Mapping) and isinstance(value.get("choices"), list):
            out.extend(check_storable("choices", str(c)) for c in value["choices"])
    return out


def _only_text(task: Mapping[str, Any]) -> str:
    """The text of a task when the project's config is unknown: its only text field."""
    data = task.get("data")
    texts = [v for v in data.values() if isinstance(v, str)] if isinstance(data, Mapping) else []
    if len(texts) == 1:
        check_storable("text", texts[0])
    if len(texts) != 1:
        raise DataError(
            f"task {task.get('id')} has {len(texts)} text fields and the project's labelling config is unknown; "
            "connect the project to hrlm again (Label Studio sends the config on setup)."
        )
    return texts[0]
