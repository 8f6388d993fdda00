"""Content-Security-Policy per path, and FastAPI's /docs and /redoc under it (in process, httpx).

Every test runs on SQLite and on PostgreSQL (the ``fundaments`` fixture). The pages in a real
browser: tests/test_e2e_docs.py.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from fundaments.bootstrap import Fundaments
from fundaments.web import DEFAULT_CSP, SecurityMiddleware, install
from fundaments.web.docs import CDN, docs_assets, script_hashes, secure_docs

BASE = "http://127.0.0.1"
OWN_CSP = "default-src 'none'; script-src 'self' 'sha256-own'"


def client(app: Any, root_path: str = "") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000), root_path=root_path)
    return httpx.AsyncClient(transport=transport, base_url=BASE)


def directives(csp: str) -> dict[str, list[str]]:
    """name -> sources of one policy."""
    parsed = {}
    for part in csp.split(";"):
        name, *sources = part.split()
        parsed[name] = sources
    return parsed


def plain_app(fundaments: Fundaments, **options: Any) -> Starlette:
    async def anything(request: Request) -> Response:
        if request.query_params.get("own"):
            return PlainTextResponse("own", headers={"Content-Security-Policy": OWN_CSP})
        return PlainTextResponse(request.url.path)

    return Starlette(
        routes=[Route("/{path:path}", anything)],
        middleware=[Middleware(SecurityMiddleware, security=fundaments.security, **options)],
    )


def fastapi_app(fundaments: Fundaments, **options: Any) -> FastAPI:
    """A FastAPI service with its default docs, a route of its own and install()."""
    app = FastAPI(title="Notes")

    @app.get("/notes")
    async def notes() -> list[str]:
        return []

    @app.get("/docsearch")  # a sibling of /docs: not a docs page
    async def docsearch() -> dict[str, str]:
        return {"found": "nothing"}

    @app.get("/redocument")  # a sibling of /redoc
    async def redocument() -> dict[str, str]:
        return {"found": "nothing"}

    install(app, fundaments=fundaments, **options)
    return app


# --- csp_by_path --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/a", "A"),
        ("/a/", "A"),
        ("/a/x", "A"),
        ("/a/b", "AB"),
        ("/a/b/c", "AB"),
        ("/a/bc", "A"),  # a prefix is a whole path segment: /a/bc is not under /a/b
        ("/ab", DEFAULT_CSP),
        ("/", DEFAULT_CSP),
        ("/other/a", DEFAULT_CSP),
    ],
)
async def test_the_longest_matching_prefix_chooses_the_policy(
    fundaments: Fundaments, path: str, expected: str
) -> None:
    app = plain_app(fundaments, csp_by_path={"/a": "A", "/a/b/": "AB"})
    async with client(app) as http:
        response = await http.get(path)
    assert response.status_code == 200
    assert response.headers["content-security-policy"] == expected
    assert response.headers["x-frame-options"] == "DENY"  # the other headers stay
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_the_prefixes_are_the_applications_paths_under_a_root_path(fundaments: Fundaments) -> None:
    app = plain_app(fundaments, csp_by_path={"/a": "A"})
    async with client(app, root_path="/api") as http:
        assert (await http.get("/api/a")).headers["content-security-policy"] == "A"
        assert (await http.get("/api/b")).headers["content-security-policy"] == DEFAULT_CSP


async def test_a_csp_the_application_sets_wins_over_the_per_path_one(fundaments: Fundaments) -> None:
    app = plain_app(fundaments, csp_by_path={"/a": "A"})
    async with client(app) as http:
        response = await http.get("/a", params={"own": "1"})
        other = await http.get("/elsewhere", params={"own": "1"})
    assert response.headers.get_list("content-security-policy") == [OWN_CSP]
    assert other.headers.get_list("content-security-policy") == [OWN_CSP]


async def test_without_a_mapping_every_response_has_the_one_policy(fundaments: Fundaments) -> None:
    app = plain_app(fundaments, content_security_policy="X")
    async with client(app) as http:
        for path in ("/", "/docs", "/redoc", "/a/b"):
            assert (await http.get(path)).headers["content-security-policy"] == "X"


# --- FastAPI's docs after install() -------------------------------------------------------------
def test_the_self_hosted_assets_are_installed() -> None:
    # fastapi-offline is in the test extra: the self-hosted path is the one tested here.
    assert docs_assets() is not None


async def test_swagger_ui_is_self_hosted_and_allows_exactly_its_own_inline_script(
    fundaments: Fundaments,
) -> None:
    app = fastapi_app(fundaments)
    async with client(app) as http:
        page = await http.get("/docs")
        assert page.status_code == 200
        csp = directives(page.headers["content-security-policy"])
        hashes = script_hashes(page.text)
        assert len(hashes) == 1
        assert csp["script-src"] == ["'self'", *hashes]  # no 'unsafe-inline', no other host
        assert csp["style-src"] == ["'self'"] and csp["default-src"] == ["'none'"]
        assert csp["frame-ancestors"] == ["'none'"] and csp["base-uri"] == ["'none'"]
        assert "cdn.jsdelivr.net" not in page.text and "https://" not in page.text
        assets = re.findall(r'(?:src|href)="(/[^"]+)"', page.text)
        assert sorted(assets) == [
            "/docs/assets/favicon.png",
            "/docs/assets/swagger-ui-bundle.js",
            "/docs/assets/swagger-ui.css",
        ]
        for url in assets:
            asset = await http.get(url)
            assert asset.status_code == 200 and len(asset.content) > 1000
            assert asset.headers["content-security-policy"] == DEFAULT_CSP
        assert (await http.get("/openapi.json")).json()["info"]["title"] == "Notes"


async def test_the_script_hash_follows_the_page_as_rendered_under_a_root_path(fundaments: Fundaments) -> None:
    app = fastapi_app(fundaments)
    async with client(app, root_path="/api") as http:
        page = await http.get("/api/docs")
    assert "url: '/api/openapi.json'" in page.text and '"/api/docs/assets/swagger-ui-bundle.js"' in page.text
    hashes = script_hashes(page.text)
    assert directives(page.headers["content-security-policy"])["script-src"] == ["'self'", *hashes]


async def test_redoc_is_self_hosted_with_inline_styles_but_never_inline_scripts(
    fundaments: Fundaments,
) -> None:
    app = fastapi_app(fundaments)
    async with client(app) as http:
        page = await http.get("/redoc")
        assert page.status_code == 200
        csp = directives(page.headers["content-security-policy"])
        assert csp["script-src"] == ["'self'"]
        assert csp["style-src"] == ["'self'", "'unsafe-inline'"]
        assert csp["worker-src"] == ["blob:"]
        assert script_hashes(page.text) == []  # nothing inline to run
        assert "fonts.googleapis.com" not in page.text and "https://" not in page.text
        assert '<script src="/docs/assets/redoc.standalone.js">' in page.text
        bundle = await http.get("/docs/assets/redoc.standalone.js")
        assert bundle.status_code == 200 and bundle.headers["content-type"].startswith("text/javascript")
        assert b"cdn.redoc.ly" not in bundle.content and len(bundle.content) > 100_000


async def test_the_oauth2_redirect_page_allows_its_one_script_by_hash(fundaments: Fundaments) -> None:
    app = fastapi_app(fundaments)
    async with client(app) as http:
        page = await http.get("/docs/oauth2-redirect")
    hashes = script_hashes(page.text)
    assert len(hashes) == 1
    assert directives(page.headers["content-security-policy"])["script-src"] == ["'self'", *hashes]


async def test_the_rest_of_the_application_keeps_the_default_policy(fundaments: Fundaments) -> None:
    """The docs' exceptions stay on the docs pages: no other response allows anything inline."""
    app = fastapi_app(fundaments)
    paths = [
        "/notes",
        "/openapi.json",
        "/docsearch",
        "/redocument",
        "/does-not-exist",
        "/docs/assets/swagger-ui.css",
        "/docs/assets/missing.js",
        "/docs.html",
        "/DOCS",
    ]
    async with client(app) as http:
        for path in paths:
            csp = (await http.get(path)).headers["content-security-policy"]
            assert csp == DEFAULT_CSP, path
        for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
            csp = directives((await http.get(path)).headers["content-security-policy"])
            for name in ("script-src", "default-src", "connect-src", "img-src", "font-src"):
                assert "'unsafe-inline'" not in csp[name] and "'unsafe-eval'" not in csp[name], (path, name)
            assert not {"*", "https:", "http:", "data:"} & set(csp["script-src"]), path
    assert "unsafe-inline" not in DEFAULT_CSP


async def test_the_applications_own_csp_by_path_wins_over_the_docs_one(fundaments: Fundaments) -> None:
    app = fastapi_app(fundaments, csp_by_path={"/redoc": "default-src 'none'"})
    async with client(app) as http:
        assert (await http.get("/redoc")).headers["content-security-policy"] == "default-src 'none'"
        assert "'sha256-" in (await http.get("/docs")).headers["content-security-policy"]


async def test_docs_csp_false_leaves_fastapis_pages_under_the_default_policy(fundaments: Fundaments) -> None:
    app = fastapi_app(fundaments, docs_csp=False)
    async with client(app) as http:
        for path in ("/docs", "/redoc"):
            page = await http.get(path)
            assert page.headers["content-security-policy"] == DEFAULT_CSP
            assert CDN in page.text  # FastAPI's own page, which that policy blocks in a browser
        assert (await http.get("/docs/assets/swagger-ui.css")).status_code == 404


async def test_without_local_assets_the_docs_allow_exactly_the_cdn(fundaments: Fundaments) -> None:
    app = FastAPI()
    policies = secure_docs(app, self_hosted=False)
    secured = SecurityMiddleware(app, fundaments.security, csp_by_path=policies)
    async with client(secured) as http:
        swagger = await http.get("/docs")
        redoc = await http.get("/redoc")
        assert (await http.get("/docs/assets/swagger-ui.css")).status_code == 404
    assert f'src="{CDN}/npm/swagger-ui-dist@5/swagger-ui-bundle.js"' in swagger.text
    csp = directives(swagger.headers["content-security-policy"])
    assert csp["script-src"] == ["'self'", CDN, *script_hashes(swagger.text)]
    assert csp["style-src"] == ["'self'", CDN]
    csp = directives(redoc.headers["content-security-policy"])
    assert csp["script-src"] == ["'self'", CDN]
    assert csp["style-src"] == ["'self'", "'unsafe-inline'", CDN]
    assert "fonts.googleapis.com" not in redoc.text


async def test_docs_assets_sit_under_redoc_when_it_is_the_only_page(fundaments: Fundaments) -> None:
    app = FastAPI(docs_url=None, redoc_url="/reference")
    install(app, fundaments=fundaments)
    async with client(app) as http:
        page = await http.get("/reference")
        assert '<script src="/reference/assets/redoc.standalone.js">' in page.text
        assert (await http.get("/reference/assets/redoc.standalone.js")).status_code == 200
        assert (await http.get("/docs")).status_code == 404


async def test_starlette_apps_and_apps_without_openapi_are_left_alone(fundaments: Fundaments) -> None:
    starlette = Starlette()
    routes = list(starlette.routes)
    assert secure_docs(starlette) == {} and starlette.routes == routes
    no_openapi = FastAPI(openapi_url=None)
    routes = list(no_openapi.routes)
    assert secure_docs(no_openapi) == {} and no_openapi.routes == routes
