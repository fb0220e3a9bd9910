"""Routes of the model registry: promote and roll back (admin), a version's history, model card and report files.

Promotion and rollback need the registry: a service started with ``--model DIR`` answers them
with 409. Both reload the model at once; other processes' changes arrive by the registry follower.

No ``from __future__ import annotations`` here: FastAPI must see the body models as objects.
"""

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import FileResponse, Response

from hrlm.errors import Conflict, NotFound
from hrlm.lifecycle import Registry, report_file, report_files
from hrlm.model_card import CARD_FILE, render_model_card
from hrlm.service.auth import require
from hrlm.service.routes.common import Version, error_responses
from hrlm.service.schemas.predict import MAX_REPORT_NAME
from hrlm.service.schemas.registry import PromoteIn, ReasonIn, ReportsOut, StageChangeOut, VersionHistoryOut
from hrlm.service.served_model import find_version, quoted
from hrlm.store.users import Principal
from hrlm.store.versions import VersionInfo

log = logging.getLogger("hrlm.service")
ROLES_CHANGE = ("admin",)
ROLES_READ = ("reviewer", "admin")
ReportName = Annotated[
    str, Path(max_length=MAX_REPORT_NAME, description="A file of the report folder, as .../report lists it.")
]
# A report is hrlm's own HTML, but label names and texts in it come from data: the page runs no script
# and is sandboxed into an opaque origin that cannot read the tokens the review pages keep.
REPORT_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; sandbox",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _registry(request: Request) -> Registry:
    service = request.app.state.service
    registry: Registry | None = service.registry
    if registry is None:
        raise Conflict(
            f"this service serves the model folder given with --model / HRLM_MODEL (version {service.model.version}), "
            "not the model registry; to promote and roll back, register it (`hrlm models register DIR --promote`) "
            "and serve without --model."
        )
    return registry


@contextmanager
def _known(version: str) -> Iterator[None]:
    """Say "no such version" in the API's words, quoting only the start of what was sent."""
    try:
        yield
    except NotFound:
        raise NotFound(f"no registered model version {quoted(version)}; GET /v1/models lists them.") from None


async def _changed(request: Request, info: VersionInfo) -> dict[str, Any]:
    """Load the new production version now, and say which version answers."""
    service = request.app.state.service
    out: dict[str, Any] = {"version": info.version, "stage": info.stage}
    try:
        await service.reload()
    except Exception as exc:  # the change is stored; the follower retries the load
        log.warning("stored the change to %s but cannot load it: %s", info.version, exc)
        out["warning"] = (
            f"the change is stored, but this service could not load {info.version} ({type(exc).__name__}); "
            "the server log has the details, and the service retries the load."
        )
    out["serving"] = service.model.version
    return out


def build_registry_router() -> APIRouter:
    """The registry's routes."""
    router = APIRouter(tags=["models"])

    @router.post(
        "/v1/models/rollback",
        response_model=StageChangeOut,
        response_model_exclude_none=True,
        responses=error_responses(401, 403, 409, 422),
        summary="Roll production back to the version that was in production before it",
    )
    async def rollback(
        request: Request, body: ReasonIn | None = None, principal: Principal = Depends(require(*ROLES_CHANGE))
    ) -> dict[str, Any]:
        """Archive the production version and bring back the previous one; this service swaps at once."""
        registry = _registry(request)
        reason = body.reason if body else None
        info = await asyncio.to_thread(registry.rollback, principal.name, reason)
        return await _changed(request, info)

    @router.post(
        "/v1/models/{version}/promote",
        response_model=StageChangeOut,
        response_model_exclude_none=True,
        responses=error_responses(401, 403, 404, 409, 422),
        summary="Put a version in production",
    )
    async def promote(
        version: Version,
        request: Request,
        body: PromoteIn | None = None,
        principal: Principal = Depends(require(*ROLES_CHANGE)),
    ) -> dict[str, Any]:
        """Promote a candidate or archived version (a rejected one with `force`); production before is archived."""
        registry = _registry(request)
        body = body or PromoteIn()
        with _known(version):
            info = await asyncio.to_thread(registry.promote, version, principal.name, body.reason, force=body.force)
        return await _changed(request, info)

    @router.get(
        "/v1/models/{version}/compare/{other}",
        responses=error_responses(401, 403, 404, 409, 422),
        summary="Two versions on the fixed holdout: metrics, per-class F1, confusion matrices, disagreements",
    )
    async def compare(
        version: Version, other: Version, request: Request, _: Principal = Depends(require(*ROLES_CHANGE))
    ) -> dict[str, Any]:
        """``version`` (a) and ``other`` (b) measured on holdout_data, and the texts they label differently (admin)."""
        from hrlm.lifecycle.compare import compare_versions

        service = request.app.state.service
        registry = _registry(request)
        for name in (version, other):
            with _known(name):
                await asyncio.to_thread(registry.get, name)
        if not service.settings.holdout_data:
            raise Conflict("comparing needs the fixed holdout file: set holdout_data (HRLM_HOLDOUT_DATA).")
        out: dict[str, Any] = await asyncio.to_thread(
            compare_versions,
            registry,
            version,
            other,
            service.settings.holdout_data,
            threads=service.settings.threads,
        )
        out["holdout"] = FilePath(out["holdout"]).name  # the file's name: the service's paths stay its own
        return out

    @router.get(
        "/v1/models/{version}/history",
        response_model=VersionHistoryOut,
        responses=error_responses(401, 403, 404, 409, 422),
        summary="A registered version's origin, stage history, gate comparison and report files",
    )
    async def history(
        version: Version, request: Request, _: Principal = Depends(require(*ROLES_READ))
    ) -> dict[str, Any]:
        registry = _registry(request)

        def read() -> dict[str, Any]:
            info = registry.get(version)
            events = [e.to_dict() for e in registry.history(version)]
            return {**info.to_dict(), "events": events, "reports": report_files(info.path)}

        with _known(version):
            return await asyncio.to_thread(read)

    @router.get(
        "/v1/models/{version}/report",
        response_model=ReportsOut,
        responses=error_responses(401, 403, 404, 422),
        summary="The files of a version's report folder",
    )
    async def reports(
        version: Version, request: Request, _: Principal = Depends(require(*ROLES_READ))
    ) -> dict[str, Any]:
        ref = await asyncio.to_thread(find_version, request.app.state.service.source, version)
        return {"version": ref.version, "reports": report_files(ref.path)}

    @router.get(
        "/v1/models/{version}/report/{name:path}",
        response_class=FileResponse,
        responses={
            200: {"description": "The file (HTML, PNG, JSON, Markdown)."},
            **error_responses(401, 403, 404, 422),
        },
        summary="One file of a version's report folder (report.html, metrics.json, gate.md, ...)",
    )
    async def report(
        version: Version, name: ReportName, request: Request, _: Principal = Depends(require(*ROLES_READ))
    ) -> FileResponse:
        """Served with a sandboxing Content-Security-Policy; paths outside the report folder answer 404."""
        ref = await asyncio.to_thread(find_version, request.app.state.service.source, version)
        return FileResponse(report_file(ref.path, name), headers=REPORT_HEADERS)

    @router.get(
        "/v1/models/{version}/card",
        response_class=Response,
        responses={
            200: {
                "content": {"text/markdown": {"schema": {"type": "string"}}},
                "description": "The model card: Markdown with YAML metadata (Hugging Face's model card format).",
            },
            **error_responses(401, 403, 404, 422),
        },
        summary="A version's model card: intended use, training data, metrics, bias audit, history",
    )
    async def card(version: Version, request: Request, _: Principal = Depends(require(*ROLES_READ))) -> Response:
        """The version's ``README.md``; a folder written before hrlm wrote cards gets one rendered on the fly."""
        ref = await asyncio.to_thread(find_version, request.app.state.service.source, version)

        def read() -> str:
            try:
                return (ref.path / CARD_FILE).read_text(encoding="utf-8")
            except FileNotFoundError:
                return render_model_card(ref.path, version=ref.version)

        text = await asyncio.to_thread(read)
        return Response(text, media_type="text/markdown; charset=utf-8", headers=REPORT_HEADERS)

    return router
