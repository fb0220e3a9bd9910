"""The routes: each validates, calls one method of the Service, and returns a schema.

No ``from __future__ import annotations`` here: FastAPI must see the request model built in
:func:`build_router` as an object, not as a name it cannot resolve.
"""

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from hrlm.errors import Conflict, StoreError
from hrlm.service.auth import require
from hrlm.service.routes.common import Version, error_responses
from hrlm.service.schemas.predict import (
    Health,
    ModelOut,
    ModelsOut,
    PredictResponse,
    predict_request,
)
from hrlm.service.served_model import describe, find_version
from hrlm.service.settings import ServiceSettings
from hrlm.store.users import Principal

ROLES_PREDICT = ("client", "admin")
ROLES_READ = ("client", "reviewer", "admin")


def build_router(settings: ServiceSettings) -> APIRouter:
    """Every route of the service, with the request limits of ``settings`` in the schema."""
    router = APIRouter()
    PredictRequest = predict_request(
        settings.max_texts,
        settings.max_text_chars,
        allow_empty=settings.allow_empty_texts,
        max_explain=settings.explain_max_texts,
    )

    @router.post(
        "/v1/predict",
        response_model=PredictResponse,
        response_model_exclude_none=True,
        responses=error_responses(401, 403, 413, 422, 429, 503, 504),
        tags=["predict"],
        summary="Predict labels for one text or a list of texts",
    )
    async def predict(
        request: Request,
        body: PredictRequest,  # type: ignore[valid-type]
        principal: Principal = Depends(require(*ROLES_PREDICT)),
    ) -> Response:
        """Labels, every class probability and the model version; each text is stored after PII redaction."""
        one = body.text is not None  # type: ignore[attr-defined]
        texts = [body.text] if one else body.texts  # type: ignore[attr-defined]
        service = request.app.state.service
        request_id = request.state.request_id
        client_id = request.state.client_request_id
        answer = await service.predict(texts, request_id=request_id, principal=principal, client_request_id=client_id)
        out: dict[str, Any] = {"request_id": request_id, "model_version": answer.model_version}
        if client_id is not None:
            out["client_request_id"] = client_id
        preds = [p.to_dict() for p in answer.predictions]
        if body.explain:  # type: ignore[attr-defined]
            # each text's own label, by the model that answered (a swap in between is refused, not mixed)
            labels = [_first_label(p["label"]) for p in preds]
            for pred, text, label in zip(preds, texts, labels, strict=True):
                version, (found,) = await service.explain([text], label=label)
                if version != answer.model_version:
                    raise Conflict(
                        f"the model changed from {answer.model_version} to {version} while explaining; send the "
                        "request again."
                    )
                pred["explanation"] = found.to_dict()
        if one:
            out["prediction"] = preds[0]
        else:
            out["predictions"] = preds
        out["stored"] = answer.stored
        out["latency_ms"] = answer.latency_ms
        return JSONResponse(out)

    @router.get("/v1/models", response_model=ModelsOut, responses=error_responses(401, 403), tags=["models"])
    async def models(request: Request, _: Principal = Depends(require(*ROLES_READ))) -> dict[str, Any]:
        """Every model version this service knows, and which one answers."""
        service = request.app.state.service
        serving = service.model.version
        return {"serving": serving, "models": [describe(r, serving=serving) for r in service.source.versions()]}

    @router.get(
        "/v1/models/{version}", response_model=ModelOut, responses=error_responses(401, 403, 404, 422), tags=["models"]
    )
    async def model(version: Version, request: Request, _: Principal = Depends(require(*ROLES_READ))) -> dict[str, Any]:
        """One model version: tasks, labels, headline metrics."""
        service = request.app.state.service
        return describe(find_version(service.source, version), serving=service.model.version)

    @router.get("/healthz", response_model=Health, response_model_exclude_none=True, tags=["health"])
    async def healthz() -> dict[str, Any]:
        """Alive (open: no token needed)."""
        return {"status": "ok"}

    @router.get(
        "/readyz",
        response_model=Health,
        response_model_exclude_none=True,
        responses=error_responses(503),
        tags=["health"],
    )
    async def readyz(request: Request) -> Any:
        """Ready: the model is loaded and the database answers (open: no token needed)."""
        try:
            state = await request.app.state.service.readiness()
        except StoreError as exc:
            return JSONResponse({"status": "not ready", "detail": str(exc)}, status_code=503)
        return state if state["status"] == "ready" else JSONResponse(state, status_code=503)

    metrics_deps = [] if settings.metrics_open else [Depends(require("admin"))]

    @router.get(
        "/metrics",
        dependencies=metrics_deps,
        responses={200: {"content": {"text/plain": {}}}, **error_responses(401, 403)},
        response_class=Response,
        tags=["health"],
    )
    async def metrics(request: Request) -> Response:
        """Prometheus metrics (admin token unless metrics_open)."""
        m = request.app.state.service.metrics
        return Response(m.render(), media_type=m.content_type)

    return router


def _first_label(label: Any) -> str | None:
    """The label an explanation is for: a multi-label prediction's first label (none: the model chooses)."""
    if isinstance(label, list):
        return str(label[0]) if label else None
    return str(label)
