"""The Starlette application: routes, and the lifespan that owns the one engine."""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from . import http_api, metrics, openai_speech
from .auth import load_or_create_token
from .bodies import BodyLimit
from .config import Settings
from .engines import create_engine
from .engines.base import Engine
from .errors import MineStreamError
from .state import ServerState
from .voices import VoiceLibrary
from .ws import stream_endpoint

log = logging.getLogger("minestream")
STATIC_DIR = Path(__file__).resolve().parent.parent / "client" / "static"


def create_app(settings: Settings, *, engine: Engine | None = None) -> Starlette:
    """The app; ``engine`` replaces the one ``settings.engine`` names (in-process tests pass a mock)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Each resource is closed by the stack in reverse order, even when a later start fails
        # or another closer raises.
        async with contextlib.AsyncExitStack() as stack:
            state = await _start_resources(stack, settings, engine)
            app.state.minestream = state
            rtc = _rtc_transport()
            if rtc is not None:
                app.state.rtc_peers = await stack.enter_async_context(rtc(settings))
            stack.push_async_callback(_close_sessions, state)
            _watch(state)
            log.info("engine %s ready", state.engine.info.name)
            yield

    async def on_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, MineStreamError)
        return http_api.error_response(exc)

    routes = [
        WebSocketRoute("/v1/stream", stream_endpoint),
        Route("/v1/voices", http_api.list_voices, methods=["GET"]),
        Route("/v1/voices", http_api.create_voice, methods=["POST"]),
        Route("/v1/voices/{voice_id}", http_api.get_voice, methods=["GET"]),
        Route("/v1/voices/{voice_id}", http_api.rename_voice, methods=["PATCH"]),
        Route("/v1/voices/{voice_id}", http_api.delete_voice, methods=["DELETE"]),
        Route("/v1/voices/{voice_id}/audio", http_api.voice_audio, methods=["GET"]),
        Route("/v1/audio/speech", openai_speech.speech, methods=["POST"]),
        Route("/healthz", http_api.healthz),
        Route("/livez", http_api.livez),
        Route("/readyz", http_api.readyz),
        Route("/ca.pem", http_api.ca_certificate),
        Route("/metrics", http_api.metrics_endpoint),
        *_extra_routes(),
        Mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static"),
    ]
    middleware = [
        Middleware(BodyLimit, limits={"/v1/voices": http_api.MAX_UPLOAD_BYTES, "/v1/rtc/offer": 64 << 10}),
        Middleware(
            CORSMiddleware,
            allow_origins=list(settings.allowed_origins),
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["X-Sample-Rate"],
        ),
    ]
    return Starlette(routes=routes, lifespan=lifespan, middleware=middleware, exception_handlers={MineStreamError: on_error})


async def _start_resources(stack: contextlib.AsyncExitStack, settings: Settings, engine: Engine | None) -> ServerState:
    """The library and the engine, started, with their closers on ``stack``."""
    token = settings.token
    if token is None and settings.token_required:
        token = load_or_create_token(settings.data_dir)
    library = VoiceLibrary(settings.data_dir, settings.database_url)
    await library.open()
    stack.push_async_callback(library.close)
    engine = engine or create_engine(settings)
    stack.push_async_callback(engine.close)
    await engine.start()
    return ServerState(settings, engine, library, token if settings.token_required else None)


async def _close_sessions(state: ServerState) -> None:
    for session in list(state.sessions | state.pending):
        await session.close()


def _rtc_transport() -> Callable[[Settings], contextlib.AbstractAsyncContextManager[Any]] | None:
    try:
        from .rtc import transport
    except ImportError:
        return None
    return transport


def _extra_routes() -> list[Route]:
    """Routes of optional transports (WebRTC), present when their packages are."""
    try:
        from .rtc import routes
    except ImportError:
        return []
    return routes()


def _watch(state: ServerState) -> None:
    metrics.BUILD.info({"version": _version(), "engine": state.engine.info.name, "kind": state.engine.info.kind})
    metrics.ACTIVE_SESSIONS.set_function(lambda: len(state.sessions))
    metrics.ACTIVE_UTTERANCES.set_function(lambda: sum(len(s.utterances) for s in state.sessions))
    metrics.QUEUE_DEPTH.set_function(lambda: float(state.engine.health().get("queue_depth", 0)))


def _version() -> str:
    try:
        return importlib.metadata.version("minestream")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
