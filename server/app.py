"""The Starlette application: routes, and the lifespan that owns the one engine."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from . import http_api, metrics
from .auth import load_or_create_token
from .config import Settings
from .engines import create_engine
from .errors import MineStreamError
from .state import ServerState
from .voices import VoiceLibrary
from .ws import stream_endpoint

log = logging.getLogger("minestream")
STATIC_DIR = Path(__file__).resolve().parent.parent / "client" / "static"


def create_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        token = settings.token
        if token is None and settings.token_required:
            token = load_or_create_token(settings.data_dir)
        library = VoiceLibrary(settings.data_dir, settings.database_url)
        await library.open()
        engine = create_engine(settings)
        await engine.start()
        state = ServerState(settings, engine, library, token if settings.token_required else None)
        app.state.minestream = state
        _watch(state)
        log.info("engine %s ready", engine.info.name)
        try:
            yield
        finally:
            for closer in state.closers:
                await closer()
            for session in list(state.sessions):
                await session.close()
            await engine.close()
            await library.close()

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
        Route("/v1/audio/speech", http_api.speech, methods=["POST"]),
        Route("/healthz", http_api.healthz),
        Route("/ca.pem", http_api.ca_certificate),
        Route("/metrics", http_api.metrics_endpoint),
        *_extra_routes(),
        Mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={MineStreamError: on_error})


def _extra_routes() -> list[Route]:
    """Routes of optional transports (WebRTC), present when their packages are."""
    try:
        from .rtc import routes
    except ImportError:
        return []
    return routes()


def _watch(state: ServerState) -> None:
    metrics.ACTIVE_SESSIONS.set_function(lambda: len(state.sessions))
    metrics.ACTIVE_UTTERANCES.set_function(lambda: sum(len(s.utterances) for s in state.sessions))
    metrics.QUEUE_DEPTH.set_function(lambda: float(state.engine.health().get("queue_depth", 0)))
