"""Opening the WebSocket, with what went wrong said as this client's errors.

A refused port, an unknown host, a certificate that does not verify, a TLS
handshake that fails, an upgrade answered with 401/403/404, a listener that
never answers: each becomes one ``client.errors`` class with a message a
person can act on.
"""

from __future__ import annotations

import socket
import ssl as ssl_module

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

from .errors import CertificateError, ConnectError, ServerError, TLSError
from .timeouts import within


async def open_socket(url: str, context: ssl_module.SSLContext | None, headers: dict[str, str] | None,
                       seconds: float | None) -> ClientConnection:
    """The WebSocket, with what went wrong said as this client's errors."""
    try:
        return await within(
            seconds,
            connect(url, ssl=context, max_size=None, additional_headers=headers, compression=None, open_timeout=None),
            "connect",
            f"{url} to accept the connection",
        )
    except ssl_module.SSLCertVerificationError as exc:
        raise CertificateError(url, exc.verify_message or exc.reason or str(exc)) from exc
    except ssl_module.SSLError as exc:
        raise TLSError(url, f"TLS handshake failed ({exc.reason or exc})") from exc
    except ConnectionRefusedError as exc:
        raise ConnectError(url, "connection refused (is the server running?)") from exc
    except socket.gaierror as exc:
        raise ConnectError(url, f"unknown host ({exc.strerror})") from exc
    except InvalidStatus as exc:
        raise _refused_upgrade(exc.response.status_code) from exc
    except InvalidURI as exc:
        raise ConnectError(url, f"not a WebSocket URL ({exc})") from exc
    except InvalidHandshake as exc:
        hint = "; a TLS server? use wss://" if url.startswith("ws:") else ""
        raise ConnectError(url, f"no WebSocket handshake ({exc}{hint})") from exc
    except OSError as exc:
        if isinstance(exc, ConnectError | TimeoutError):
            raise
        raise ConnectError(url, exc.strerror or str(exc) or type(exc).__name__) from exc


def _refused_upgrade(status: int) -> ServerError:
    if status == 401:
        return ServerError.from_message({"code": "unauthorized", "message": "a valid token is required"}, status)
    if status == 403:
        return ServerError.from_message({"code": "forbidden", "message": "the server refused the connection (403: Origin not allowed?)"}, status)
    if status == 404:
        return ServerError.from_message({"code": "not_found", "message": "no MineStream socket at this URL (404)"}, status)
    return ServerError.from_message({"code": f"http_{status}", "message": f"the WebSocket upgrade was answered with HTTP {status}"}, status)
