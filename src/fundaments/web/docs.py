"""FastAPI's API docs (``/docs``, ``/redoc``) under fundaments' Content-Security-Policy.

FastAPI's Swagger UI page runs an inline ``<script>`` and loads its JavaScript and CSS from a CDN;
ReDoc loads its bundle from the CDN, and its styled-components inject ``<style>`` elements. The
default policy (``script-src 'self'``) blocks both. :func:`secure_docs`, which :func:`install`
calls for a FastAPI application, replaces FastAPI's two page routes with ones that

- load Swagger UI and ReDoc from this server, from the files the ``fastapi-offline`` package ships
  (``pip install 'fundaments[fastapi]'``), or from ``https://cdn.jsdelivr.net`` (FastAPI's own
  URLs) when that package is absent;
- answer with a policy of their own: Swagger UI's inline start-up script is allowed by its
  ``'sha256-…'`` hash, computed from the page as rendered, so no other inline script runs; ReDoc
  gets ``style-src 'unsafe-inline'`` (styles only, never scripts) on its own path.

The rest of the application keeps the middleware's policy.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

ASSETS_PACKAGE = "fastapi_offline"  # swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js, favicon.png
ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
CDN = "https://cdn.jsdelivr.net"  # FastAPI's default asset host, allowed only without local assets
FASTAPI_FAVICON_HOST = "https://fastapi.tiangolo.com"  # FastAPI's default favicon, ditto

# ReDoc 2 always draws the Redocly logo from its CDN (no option hides it); the policy would block
# it with a console report. The self-hosted bundle points it at an empty data: URL instead, which
# fails to decode, so ReDoc drops the image as it does offline.
REDOC_LOGO = b'"https://cdn.redoc.ly/redoc/logo-mini.svg"'
NO_IMAGE = b'"data:,"'

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)  # no attributes: inline code


def docs_assets() -> Path | None:
    """The folder of the self-hosted Swagger UI and ReDoc files, or None when not installed."""
    spec = importlib.util.find_spec(ASSETS_PACKAGE)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    return folder if all((folder / name).is_file() for name in ASSET_FILES) else None


def script_hashes(html: str) -> list[str]:
    """The CSP ``'sha256-…'`` source of each inline script of ``html``, in page order."""
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(code.encode()).digest()).decode() + "'"
        for code in _INLINE_SCRIPT.findall(html)
    ]


def docs_policy(scripts: str, styles: str, images: str = "") -> str:
    """A CSP for one docs page: the default policy with these extra script, style and image sources."""
    return (
        f"default-src 'none'; script-src 'self'{scripts}; style-src 'self'{styles}; "
        f"img-src 'self' data:{images}; font-src 'self'; connect-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )


def secure_docs(app: Starlette, assets: Path | None = None, *, self_hosted: bool = True) -> dict[str, str]:
    """Make a FastAPI application's docs pages work under the security headers.

    Replaces the ``docs_url`` and ``redoc_url`` routes (self-hosted assets under
    ``<docs_url>/assets`` when ``fastapi-offline`` is installed and ``self_hosted``, the CDN
    otherwise) and returns the ``csp_by_path`` entries for the pages whose policy does not depend
    on the request (ReDoc, Swagger UI's OAuth2 redirect page); the Swagger UI page sends its own
    policy with its script's hash. An application that is not FastAPI, or has no OpenAPI
    document, is left alone (``{}``).
    """
    if "fastapi" not in sys.modules:
        return {}  # not imported: the application cannot be a FastAPI one
    from fastapi import FastAPI
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html

    if not isinstance(app, FastAPI) or not app.openapi_url or not (app.docs_url or app.redoc_url):
        return {}
    openapi_url, title = app.openapi_url, app.title
    if self_hosted and assets is None:
        assets = docs_assets()
    base = f"{(app.docs_url or app.redoc_url or '').rstrip('/')}/assets"
    cdn = "" if assets is not None else f" {CDN}"
    images = "" if assets is not None else f" {FASTAPI_FAVICON_HOST}"
    defaults = {**_defaults(get_swagger_ui_html), **_defaults(get_redoc_html)}  # FastAPI's CDN URLs
    policies: dict[str, str] = {}
    pages: dict[str, Route] = {}

    def url(request: Request, parameter: str, name: str) -> str:
        """The URL of one asset: on this server, or FastAPI's default without local assets."""
        if assets is None:
            return str(defaults[parameter])
        return f"{request.scope.get('root_path', '').rstrip('/')}{base}/{name}"

    if app.docs_url:
        redirect_url = app.swagger_ui_oauth2_redirect_url

        async def swagger_ui(request: Request) -> HTMLResponse:
            root = request.scope.get("root_path", "").rstrip("/")
            page = get_swagger_ui_html(
                openapi_url=root + openapi_url,
                title=f"{title} - Swagger UI",
                swagger_js_url=url(request, "swagger_js_url", "swagger-ui-bundle.js"),
                swagger_css_url=url(request, "swagger_css_url", "swagger-ui.css"),
                swagger_favicon_url=url(request, "swagger_favicon_url", "favicon.png"),
                oauth2_redirect_url=root + redirect_url if redirect_url else None,
                init_oauth=app.swagger_ui_init_oauth,
                swagger_ui_parameters=app.swagger_ui_parameters,
            )
            # The hash of the start-up script exactly as rendered (its URLs depend on root_path).
            hashes = "".join(f" {h}" for h in script_hashes(bytes(page.body).decode()))
            page.headers["content-security-policy"] = docs_policy(cdn + hashes, cdn, images)
            return page

        pages[app.docs_url] = Route(app.docs_url, swagger_ui, include_in_schema=False)
        if redirect_url:  # FastAPI's page stays; its one inline script never changes
            redirect = bytes(get_swagger_ui_oauth2_redirect_html().body).decode()
            policies[redirect_url] = docs_policy("".join(f" {h}" for h in script_hashes(redirect)), "")

    if app.redoc_url:

        async def redoc(request: Request) -> HTMLResponse:
            root = request.scope.get("root_path", "").rstrip("/")
            return get_redoc_html(
                openapi_url=root + openapi_url,
                title=f"{title} - ReDoc",
                redoc_js_url=url(request, "redoc_js_url", "redoc.standalone.js"),
                redoc_favicon_url=url(request, "redoc_favicon_url", "favicon.png"),
                with_google_fonts=False,  # fonts from another host; ReDoc falls back to system fonts
            )

        pages[app.redoc_url] = Route(app.redoc_url, redoc, include_in_schema=False)
        # ReDoc's styled-components write <style> elements: inline styles here, never inline scripts.
        # Its search index runs in a Web Worker made from a blob: URL.
        policies[app.redoc_url] = docs_policy(cdn, " 'unsafe-inline'" + cdn, images) + "; worker-src blob:"

    routes = app.router.routes
    replaced = []
    for index, route in enumerate(routes):
        path = getattr(route, "path", None)
        if isinstance(route, Route) and path in pages:
            routes[index] = pages[path]
            replaced.append(index)
    if assets is not None and replaced:
        # Before the pages, so a catch-all route the application added earlier cannot shadow them.
        folder = assets
        bundle: list[bytes] = []  # read on first use, kept: a megabyte, served to docs readers only

        async def redoc_bundle(request: Request) -> Response:
            if not bundle:
                bundle.append((folder / "redoc.standalone.js").read_bytes().replace(REDOC_LOGO, NO_IMAGE))
            return Response(bundle[0], media_type="text/javascript; charset=utf-8")

        routes[replaced[0] : replaced[0]] = [
            Route(f"{base}/redoc.standalone.js", redoc_bundle, methods=["GET"], include_in_schema=False),
            Mount(base, StaticFiles(directory=folder), name="fundaments-docs-assets"),
        ]
    return policies


def _defaults(function: Callable[..., Any]) -> dict[str, Any]:
    return {name: p.default for name, p in inspect.signature(function).parameters.items()}
