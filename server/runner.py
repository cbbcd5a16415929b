"""Serving the app: uvicorn over TLS, with the connection clocks, quiet logs and a graceful drain.

* A TLS connection that never sends a request is closed after
  ``request_timeout_s`` (uvicorn only times out connections that have had a
  request), so idle sockets cannot pile up; a request whose body is refused
  mid-stream is cut off, not read to its end (``http_protocol``).
* WebSocket pings find peers that vanished without a close.
* Every log line goes through one handler and one format, with any token
  redacted (``?token=`` is in access lines and WebSocket upgrades).
* On SIGTERM the server drains: ``/readyz`` turns 503 and new sessions are
  refused (close 1012), utterances in flight may finish until
  ``drain_timeout_s``, then it stops listening and closes every WebSocket
  with 1012 (service restart: clients may reconnect).
  SIGINT (Ctrl-C) stops at once, as a developer expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import re
import signal
import socket
import sys
import time
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from .app import create_app
from .config import Settings
from .state import ServerState

log = logging.getLogger("minestream")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_TOKEN = re.compile(r"(?i)(token=|bearer\s+)[^\s&\"']+")


class RedactTokens(logging.Filter):
    """Replaces the value of ``token=`` and ``Bearer`` in every record: logs are read by more people than the token."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _TOKEN.search(message):
            record.msg, record.args = _TOKEN.sub(r"\1[redacted]", message), ()
        return True


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RedactTokens())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # Alembic lists each of its plugins at INFO on every start; "Running upgrade" stays.
    logging.getLogger("alembic.runtime.plugins").setLevel(max(logging.WARNING, root.level))


def http_protocol(first_request_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol with two more rules for hostile clients.

    * A connection that sends no request within ``first_request_s`` is closed.
    * At shutdown an idle keep-alive connection is dropped, not closed politely.
    * A response that ends while its request's body is still coming (a body
      refused mid-stream, ``server.bodies``) drops the connection at once: a
      TLS close waits for the peer's close_notify and keeps reading meanwhile,
      which would let a client push its whole gigabyte anyway.
    """
    base: Any = AutoHTTPProtocol

    class GuardedHTTP(base):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            # uvicorn's keep-alive timer does exactly this between requests, and the first data cancels it.
            self.timeout_keep_alive_task = self.loop.call_later(first_request_s, self.timeout_keep_alive_handler)

        def on_response_complete(self) -> None:
            cycle = getattr(self, "cycle", None)
            if cycle is not None and cycle.more_body and not getattr(cycle, "keep_alive", False):
                # The response has been written; on the next turn of the loop drop the rest unread.
                self.loop.call_soon(self.transport.abort)
            super().on_response_complete()

        def shutdown(self) -> None:
            cycle = getattr(self, "cycle", None)
            if cycle is None or cycle.response_complete:
                # Idle keep-alive: a TLS close would wait for a close_notify that a pooled client
                # which is not reading never sends, holding the stop for timeout_graceful_shutdown.
                self.transport.abort()
            else:
                super().shutdown()  # mid-request: the response finishes, then the connection closes

    return GuardedHTTP


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Starlette, drain_timeout_s: float) -> None:
        super().__init__(config)
        self._app = app
        self._drain_timeout_s = drain_timeout_s
        self._drain = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._drain = self._drain or sig == signal.SIGTERM
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state: ServerState | None = getattr(self._app.state, "minestream", None)
        if self._drain and state is not None:
            # Still listening: /readyz answers 503 and new sessions are refused with 1012,
            # so load balancers see the server leave before its sockets do.
            await drain(state, self._drain_timeout_s)
        await super().shutdown(sockets)


async def drain(state: ServerState, timeout_s: float) -> None:
    """Refuse new sessions and let open utterances finish, for at most ``timeout_s``."""
    state.draining = True
    deadline = time.monotonic() + timeout_s
    log.info("draining: %d sessions with work in flight, up to %.0f s", sum(s.busy for s in state.sessions), timeout_s)
    while (left := deadline - time.monotonic()) > 0:
        running = [task for session in state.sessions for task in session.utterances.tasks]
        if not running:
            break
        await asyncio.wait(running, timeout=left)
    # The last audio and the done messages are still on their way out.
    sending = [asyncio.ensure_future(session.outbox.sent()) for session in state.sessions]
    if sending:
        await asyncio.wait(sending, timeout=max(0.1, deadline - time.monotonic()))
        for waiter in sending:
            waiter.cancel()


def return_freed_memory() -> None:
    """Keep glibc from holding on to freed audio buffers (its mmap threshold grows after each big free).

    Without this, RSS stays at its peak after a burst of long utterances.
    """
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    try:
        libc = ctypes.CDLL(libc_name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 256 * 1024)
        libc.mallopt(m_trim_threshold, 1024 * 1024)
    except (OSError, AttributeError):  # not glibc
        pass


def exit_after_shutdown() -> None:
    """End the process at once after a clean stop: logs flushed, the interpreter's teardown skipped.

    Everything the server opened is closed by then (the lifespan's stack); what
    is left is freeing the objects of a few hundred modules, which took 0.35 s
    of a 0.6 s Ctrl-C and frees nothing the OS does not. Only ``python -m
    server`` calls it, never code that imports ``serve``.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def serve(settings: Settings, cert: str | None, key: str | None, log_level: str) -> None:
    return_freed_memory()
    app = create_app(settings)
    limits = settings.limits
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ssl_certfile=cert,
        ssl_keyfile=key,
        # Frames up to twice the protocol limit reach the session and get a
        # clear too_large error; beyond that the socket layer closes with 1009.
        ws_max_size=2 * limits.max_message_bytes + 65536,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        http=http_protocol(limits.request_timeout_s),
        log_config=None,
        log_level=log_level,
        lifespan="on",
        proxy_headers=settings.behind_proxy,
        forwarded_allow_ips="*" if settings.behind_proxy else None,
        # After the drain, what is left (a browser's idle keep-alive) is not waited on.
        timeout_graceful_shutdown=3,
    )
    # uvicorn re-raises the signal it stopped on once it has shut down; Ctrl-C is not an error.
    with contextlib.suppress(KeyboardInterrupt):
        DrainingServer(config, app, settings.drain_timeout_s).run()
