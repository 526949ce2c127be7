"""The viewer's HTTP API and page (FastAPI): ``create_app`` builds the app, installs the middleware
(Host check and body limit, token check, error answers) and includes the routers ``routes_*``, whose
routes are short: they call ``project_data``, ``curate``, ``quality``, ``thumbnails`` and
``tomograms``, which call the workflow layer; what they share comes from ``web.deps``.

Safety: every request needs the session token — ``?token=`` once (then a cookie), or the header
``X-Tiltflow-Token``; without one, or with a wrong one, the answer is 403. No route takes a path:
images are found from the project's items and rendered server-side into ``.cache/thumbs``.
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from tiltflow.web import routes_curate, routes_images, routes_live, routes_project, routes_tomograms
from tiltflow.web.curate import Curator
from tiltflow.web.limits import RequestLimits, served_path
from tiltflow.web.thumbnails import ThumbnailCache
from tiltflow.web.tomograms import SliceServer
from tiltflow.workflow.errors import InputError, ProjectError
from tiltflow.workflow.store import ProjectStore

STATIC = Path(__file__).parent / "static"
TOKEN_HEADER = "x-tiltflow-token"


def cookie_name(token: str) -> str:
    """Per-session cookie name, so two viewers on one host do not overwrite each other's cookie."""
    return "tiltflow_" + hashlib.sha256(token.encode()).hexdigest()[:10]


def _install_token_check(app: FastAPI, token: str) -> None:
    expected = token.encode()
    name = cookie_name(token)

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        from_query = request.query_params.get("token")
        supplied = [t for t in (from_query, request.headers.get(TOKEN_HEADER), request.cookies.get(name)) if t]
        if not supplied:
            return JSONResponse({"detail": "token required — open the URL that `tiltflow view` printed"}, 403)
        if not any(secrets.compare_digest(t.encode(), expected) for t in supplied):
            return JSONResponse({"detail": "wrong token — open the URL that `tiltflow view` printed"}, 403)
        if from_query and request.method == "GET" and request.url.path == "/":
            response: Response = RedirectResponse("/", status_code=303)  # drop the token from the address bar
        else:
            response = await call_next(request)
        if from_query:
            response.set_cookie(name, token, httponly=True, samesite="strict")
        return response


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProjectError)
    async def not_found(_request: Request, err: ProjectError):
        return JSONResponse({"detail": str(err)}, 404)

    @app.exception_handler(InputError)
    async def bad_input(_request: Request, err: InputError):
        return JSONResponse({"detail": "; ".join(err.problems)}, 400)

    @app.exception_handler(FileNotFoundError)
    async def missing_file(_request: Request, err: FileNotFoundError):
        return JSONResponse({"detail": str(err)}, 404)

    @app.exception_handler(ValueError)
    async def unreadable(_request: Request, err: ValueError):  # MovieError, StackError: unreadable data
        return JSONResponse({"detail": str(err)}, 422)


def create_app(
    store: ProjectStore, token: str, *, cache_dir: Path | None = None, hosts: list[str] | tuple[str, ...] | None = None
) -> FastAPI:
    """The viewer for ``store``; ``app.state`` holds what its routes share (``web.deps``): ``store``,
    ``cache`` (thumbnails), ``curator`` and ``slices`` (tomogram slices).
    ``hosts``: names it answers besides loopback (``view --host``), see ``web.limits``."""
    if len(token) < 16:
        raise ValueError("create_app: the token must be at least 16 characters (use secrets.token_urlsafe())")
    app = FastAPI(title="tiltflow viewer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.state.cache = ThumbnailCache(
        cache_dir or store.root / ".cache" / "thumbs", guard=lambda f: served_path(store.root, f)
    )  # no symlinks out
    app.state.curator = Curator(store)
    app.state.slices = SliceServer()
    _install_token_check(app, token)
    _install_error_handlers(app)
    app.add_middleware(RequestLimits, hosts=hosts)  # outermost: Host check, body limit
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for routes in (routes_project, routes_images, routes_curate, routes_tomograms, routes_live):
        app.include_router(routes.router)
    return app
