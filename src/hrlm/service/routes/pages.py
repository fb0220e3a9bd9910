"""The web pages: ``/ui/review`` for reviewers, ``/ui/admin`` and ``/ui/audit-log`` for admins, with their scripts
and styles.

The pages are shells that carry no data, so they are served without a token; every piece of data
comes from the token-checked API, which their scripts call with ``Authorization: Bearer`` (the
token is kept in the tab's sessionStorage). A strict Content-Security-Policy allows scripts, styles
and requests from this server only, so a text under review can never run as code.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from hrlm._version import __version__
from hrlm.errors import NotFound
from hrlm.service.served_model import quoted

HERE = Path(__file__).resolve().parent.parent  # the service package: templates/ and static/
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
MEDIA_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# Swagger UI's script and style, served from the swagger-ui-bundle package (no CDN: nothing /docs loads
# comes from another host, so nothing can be swapped under it)
DOCS_ASSETS = {"swagger-ui-bundle.js": MEDIA_TYPES[".js"], "swagger-ui.css": MEDIA_TYPES[".css"]}
PAGES = {
    "review": {
        "template": "review.html",
        "title": "Review",
        "role": "reviewer",
        "signin_title": "Sign in to review",
        "signin_help": "Paste a reviewer token (an admin creates one with `hrlm users add NAME --role reviewer`).",
    },
    "admin": {
        "template": "admin.html",
        "title": "Admin",
        "role": "admin",
        "signin_title": "Sign in as admin",
        "signin_help": "Paste an admin token (`hrlm users add NAME --role admin`).",
    },
    "browse": {
        "template": "browse.html",
        "title": "Find items",
        "role": "reviewer",
        "signin_title": "Sign in to find review items",
        "signin_help": "Paste a reviewer or admin token (`hrlm users add NAME --role reviewer`).",
    },
    "audit-log": {
        "template": "audit_log.html",
        "title": "Audit log",
        "role": "admin",
        "signin_title": "Sign in as admin to read the audit log",
        "signin_help": "Paste an admin token (`hrlm users add NAME --role admin`).",
    },
}


def static_files() -> list[str]:
    """The file names under ``static/`` (the only files ``/static/...`` serves)."""
    return sorted(p.name for p in STATIC.iterdir() if p.is_file() and p.suffix in MEDIA_TYPES)


def open_paths() -> set[str]:
    """The paths the token gate lets through: the page shells and their static files (they hold no data)."""
    pages = {"/ui", "/ui/", *(f"/ui/{name}" for name in PAGES), *(f"/static/{name}" for name in static_files())}
    return pages | {f"/docs/{name}" for name in DOCS_ASSETS}


@lru_cache(maxsize=1)
def _env() -> Environment:
    return Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]))


def render_page(name: str) -> str:
    """The HTML of page ``name`` (``review`` or ``admin``)."""
    page = PAGES[name]
    return _env().get_template(page["template"]).render(page=name, version=__version__, **page)


def build_ui_router() -> APIRouter:
    """The pages and their static files (not in the OpenAPI schema)."""
    router = APIRouter(include_in_schema=False)

    # HEAD answers as GET does, headers and all (Starlette sends no body for it): a checker's HEAD sees the CSP
    @router.api_route("/ui", methods=["GET", "HEAD"])
    @router.api_route("/ui/", methods=["GET", "HEAD"])
    async def home() -> Response:
        return RedirectResponse("/ui/review", status_code=307)

    def page_route(name: str) -> None:
        async def page() -> Response:
            headers = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
            return HTMLResponse(render_page(name), headers=headers)

        router.add_api_route(f"/ui/{name}", page, methods=["GET", "HEAD"], name=f"ui_{name}")

    for name in PAGES:
        page_route(name)

    files = set(static_files())

    @router.api_route("/static/{name}", methods=["GET", "HEAD"])
    async def static(name: str) -> Response:
        if name not in files:
            raise NotFound(f"no static file {quoted(name)}.")
        path = STATIC / name
        headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "public, max-age=300"}
        return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=headers)

    return router


def build_docs_router(title: str, openapi_url: str = "/openapi.json") -> APIRouter:
    """``/docs`` (Swagger UI) with its script and style from the installed swagger-ui-bundle package."""
    from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from swagger_ui_bundle import swagger_ui_path

    router = APIRouter(include_in_schema=False)

    @router.api_route("/docs", methods=["GET", "HEAD"])
    async def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - API",
            swagger_js_url="/docs/swagger-ui-bundle.js",
            swagger_css_url="/docs/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
            oauth2_redirect_url="/docs/oauth2-redirect",
        )

    @router.api_route("/docs/oauth2-redirect", methods=["GET", "HEAD"])
    async def oauth2_redirect() -> Response:
        return get_swagger_ui_oauth2_redirect_html()

    @router.api_route("/docs/{name}", methods=["GET", "HEAD"])
    async def asset(name: str) -> Response:
        if name not in DOCS_ASSETS:
            raise NotFound(f"no file {quoted(name)} of the API docs.")
        path = Path(str(swagger_ui_path / name))
        headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "public, max-age=300"}
        return FileResponse(path, media_type=DOCS_ASSETS[name], headers=headers)

    return router
