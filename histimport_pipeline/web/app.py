"""The FastAPI application: state, dependencies, error answers and security headers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from histimport_pipeline.engine import errors as engine_errors
from histimport_pipeline.engine import tracking
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.models import AuditAction
from histimport_pipeline.engine.reconciliation.review import MatchNotFoundError, ReviewError
from histimport_pipeline.engine.settings import Settings
from histimport_pipeline.engine.spec import DatasetSpec, load_specs
from histimport_pipeline.engine.uploads import Upload, UploadError, import_upload
from histimport_pipeline.web.auth import (
    CSRF_HEADER,
    AccessRefusedError,
    Caller,
    caller_of,
    require_operator,
)
from histimport_pipeline.web.config import WebConfig

log = logging.getLogger("histimport.web")
HERE = Path(__file__).parent
#: What every answer says about itself to the browser. The API docs page (``/docs``) runs
#: Swagger UI's inline start-up script and gets its own policy.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
}
_DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self' 'unsafe-inline'; frame-ancestors 'none'"
)
#: Engine errors and the HTTP status that says what kind of trouble each is.
_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (engine_errors.ImportNotFoundError, 404),
    (MatchNotFoundError, 404),
    (engine_errors.DatasetNotFoundError, 404),
    (engine_errors.RollbackConflictError, 409),
    (engine_errors.ImportArchivedError, 409),
    (ReviewError, 409),
    (engine_errors.DatabaseUnavailableError, 503),
    (engine_errors.TransientError, 503),
)


@dataclass
class WebState:
    """What the routes share: the settings, the service's configuration and the database."""

    settings: Settings
    config: WebConfig
    db: Database
    #: Runs the imports of uploads in ``direct`` mode, one at a time.
    importer: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="histimport-upload")
    )

    def start_import(self, upload: Upload) -> Future[Any]:
        """Import an upload in the background (``direct`` mode); failures are logged (the
        import records its own outcome)."""

        def run() -> Any:
            try:
                return import_upload(self.db, self.settings, self.spec(upload.dataset), upload)
            except Exception:
                log.exception("the import of upload %s failed", upload.file_name)
                raise

        return self.importer.submit(run)

    def specs(self) -> dict[str, DatasetSpec]:
        """The dataset specs as they are on disk now (an edited spec shows at once)."""
        return load_specs(self.settings.datasets)

    def spec(self, name: str) -> DatasetSpec:
        """One dataset's spec.

        Raises:
            DatasetNotFoundError: no dataset of that name.
        """
        specs = self.specs()
        if name not in specs:
            raise engine_errors.DatasetNotFoundError(name, sorted(specs))
        return specs[name]


async def state_of(request: Request) -> WebState:
    """The application's shared state."""
    state: WebState = request.app.state.web
    return state


State = Annotated[WebState, Depends(state_of)]


# The dependencies are coroutines: checking a token is a hash, not I/O, and a plain function
# would cost a hop to the thread pool on every request (the status poll is mostly that).
async def reader(request: Request, state: State) -> Caller:
    """A caller who may read (every known token; anyone on loopback without tokens)."""
    return caller_of(request, state.config)


async def operator(request: Request, state: State) -> Caller:
    """A caller who may write: an operator token (a cookie also needs ``X-CSRF-Token``)."""
    caller = caller_of(request, state.config)
    return require_operator(caller, state.config, request.headers.get(CSRF_HEADER))


Reader = Annotated[Caller, Depends(reader)]
Operator = Annotated[Caller, Depends(operator)]


def status_of(exc: BaseException) -> int:
    """The HTTP status of an engine error: 404 unknown, 409 conflict, 503 database away,
    413/409/422 refused uploads, else 422 (a request the engine cannot do as asked)."""
    if isinstance(exc, UploadError):
        return exc.status
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 422


def create_app(
    settings: Settings | None = None,
    config: WebConfig | None = None,
    db: Database | None = None,
) -> FastAPI:
    """The service, over ``settings``'s database (default: both read from the environment).

    Args:
        db: an open database to use (tests pass theirs); otherwise one is opened here and
            disposed when the application shuts down.
    """
    settings = settings or Settings.from_env()
    config = config or WebConfig.from_env()
    owned = db is None
    database = db or Database.from_settings(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        app.state.web.importer.shutdown(wait=True)
        if owned:
            database.dispose()

    app = FastAPI(
        title="histimport",
        summary="Every import of historical data files: history, status, failed rows, lineage.",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.web = WebState(settings=settings, config=config, db=database)
    _add_error_answers(app)
    _add_security_headers(app)
    from histimport_pipeline.web import pages
    from histimport_pipeline.web.api import router

    app.include_router(router, prefix="/api")
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    _add_docs(app)
    return app


def _add_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI served from the files the ``fastapi-offline`` package ships, so
    the API docs work on a machine without internet access (FastAPI's default loads Swagger
    UI from a CDN)."""
    import fastapi_offline
    from fastapi.openapi.docs import get_swagger_ui_html

    assets = Path(fastapi_offline.__file__).parent / "static"
    app.mount("/docs/assets", StaticFiles(directory=assets), name="docs")

    @app.get("/docs", include_in_schema=False)
    def _docs() -> Response:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="histimport API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )


def _wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api") and "text/html" in request.headers.get(
        "accept", ""
    )


def _add_error_answers(app: FastAPI) -> None:
    @app.exception_handler(AccessRefusedError)
    async def _refused(request: Request, exc: AccessRefusedError) -> Response:
        state: WebState = request.app.state.web
        details = {
            "method": request.method,
            "path": request.url.path,
            "status": exc.status,
            "reason": exc.reason,
            "client": request.client.host if request.client else None,
        }
        try:
            await run_in_threadpool(
                tracking.record_event, state.db, AuditAction.ACCESS_REFUSED, exc.caller, details
            )
        except Exception:  # the refusal stands even when the audit cannot be written
            log.exception("could not audit a refused request")
        if _wants_html(request):
            from histimport_pipeline.web.pages import error_page

            return error_page(request, exc.status, exc.reason)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.reason}, exc.status, headers=headers)

    @app.exception_handler(engine_errors.HistimportError)
    async def _engine_error(request: Request, exc: engine_errors.HistimportError) -> Response:
        status = status_of(exc)
        if _wants_html(request):
            from histimport_pipeline.web.pages import error_page

            return error_page(request, status, str(exc))
        return JSONResponse({"detail": str(exc)}, status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if _wants_html(request):
            from histimport_pipeline.web.pages import error_page

            text = "no such page" if exc.status_code == 404 else str(exc.detail)
            return error_page(request, exc.status_code, text)
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> Response:
        if _wants_html(request):
            from histimport_pipeline.web.pages import error_page

            where = ", ".join(
                ".".join(str(p) for p in e.get("loc", ())[1:]) or "request" for e in exc.errors()
            )
            return error_page(request, 422, f"this address has a value that does not fit: {where}")
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        text = "internal error: the service's log has the details"
        if _wants_html(request):
            from histimport_pipeline.web.pages import error_page

            return error_page(request, 500, text)
        return JSONResponse({"detail": text}, 500)


def _add_security_headers(app: FastAPI) -> None:
    app.add_middleware(SecurityHeaders)


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every answer (``/docs`` gets its own policy). Plain
    ASGI rather than ``@app.middleware``: that one wraps every request in extra tasks and
    streams, which the status poll would pay for each time."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        docs = scope.get("path") == "/docs"

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
                if docs:
                    headers["Content-Security-Policy"] = _DOCS_CSP
            await send(message)

        await self.app(scope, receive, with_headers)
