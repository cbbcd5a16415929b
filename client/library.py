"""The server's voice library over its HTTP API (``/v1/voices``).

    async with VoiceLibrary.at("wss://host:8443/v1/stream", token=..., ca="certs/ca.pem") as voices:
        for voice in await voices.list():
            print(voice.id, voice.name)
        me = await voices.clone("me.wav", name="Me", ref_text="what I said")
        await voices.rename(me.id, "Me, again")
        await voices.delete(me.id)

A connected ``Client`` has one as ``client.voices`` (same server, token and
trust). Errors are this client's: ``Unauthorized`` for a 401,
``VoiceNotFound`` for an unknown id, ``ConnectError``/``CertificateError``
when the server cannot be reached, ``Timeout(stage="request")``.
"""

from __future__ import annotations

import asyncio
import mimetypes
import ssl as ssl_module
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

import httpx

from .errors import CertificateError, ConnectError, MineStreamError, ServerError, Timeout, TLSError, VoiceNotFound
from .messages import Voice
from .tls import ssl_context

HTTP_CODES = {400: "bad_message", 401: "unauthorized", 404: "voice_not_found", 413: "too_large", 415: "unsupported_audio",
              429: "limit", 503: "unavailable"}
"""The protocol code for an HTTP error whose body does not say (a proxy's, say)."""


def http_base(url: str) -> str:
    """``https://host:port`` for a server's ``wss://host:port/v1/stream`` (``ws:`` gives ``http:``)."""
    parts = urlsplit(url)
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def url_token(url: str) -> str | None:
    """A ``?token=`` on the URL, if any."""
    values = parse_qs(urlsplit(url).query).get("token")
    return values[0] if values else None


class VoiceLibrary:
    def __init__(self, base_url: str, *, token: str | None = None, ssl: ssl_module.SSLContext | None = None,
                 timeout: float | None = 30.0) -> None:
        self.base_url = base_url
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        verify: ssl_module.SSLContext | bool = ssl if ssl is not None else True
        self._http = httpx.AsyncClient(base_url=base_url, headers=headers, verify=verify, timeout=timeout)

    @classmethod
    def at(cls, url: str, *, token: str | None = None, ca: str | Path | None = None, insecure: bool = False,
           timeout: float | None = 30.0) -> VoiceLibrary:
        """The library of the server at ``url`` (its socket URL or its ``https://host:port``)."""
        base = http_base(url)
        context = ssl_context(ca, insecure=insecure) if base.startswith("https:") else None
        return cls(base, token=token or url_token(url), ssl=context, timeout=timeout)

    async def __aenter__(self) -> VoiceLibrary:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    # --- the calls ---------------------------------------------------------

    async def list(self) -> list[Voice]:
        body = await self._json("GET", "/v1/voices")
        return [Voice.parse(v) for v in body.get("voices", [])]

    async def get(self, voice_id: str) -> Voice:
        return Voice.parse(await self._json("GET", f"/v1/voices/{quote(voice_id, safe='')}"))

    async def find(self, name_or_id: str) -> Voice:
        """The voice with this id, else the one with this name (``VoiceNotFound`` if none, or several)."""
        voices = await self.list()
        for voice in voices:
            if voice.id == name_or_id:
                return voice
        named = [v for v in voices if v.name == name_or_id]
        if len(named) == 1:
            return named[0]
        detail = f"{len(named)} voices are named {name_or_id!r}; use an id" if named else f"no voice has the id or name {name_or_id!r}"
        raise VoiceNotFound("voice_not_found", detail)

    async def rename(self, voice_id: str, name: str) -> Voice:
        return Voice.parse(await self._json("PATCH", f"/v1/voices/{quote(voice_id, safe='')}", json={"name": name}))

    async def delete(self, voice_id: str) -> None:
        await self._request("DELETE", f"/v1/voices/{quote(voice_id, safe='')}")

    async def audio(self, voice_id: str) -> bytes:
        """The voice's reference recording, as 24 kHz mono WAV."""
        return (await self._request("GET", f"/v1/voices/{quote(voice_id, safe='')}/audio")).content

    async def clone(self, recording: str | Path | bytes, *, name: str | None = None, ref_text: str | None = None,
                    mime: str | None = None, filename: str = "recording") -> Voice:
        """Clone from a recording (a path, or its bytes) as one multipart upload."""
        if isinstance(recording, bytes):
            data = recording
        else:
            path = Path(recording)
            data = await asyncio.to_thread(path.read_bytes)
            filename, name = path.name, name or path.stem
        mime = mime or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        fields = {k: v for k, v in (("name", name), ("ref_text", ref_text)) if v is not None}
        return Voice.parse(await self._json("POST", "/v1/voices", files={"file": (filename, data, mime)}, data=fields))

    async def save_design(self, design: str, *, name: str | None = None, language: str = "auto") -> Voice:
        """Keep a designed voice (a description) in the library."""
        return Voice.parse(await self._json("POST", "/v1/voices", json={"design": design, "name": name or "", "language": language}))

    # --- HTTP --------------------------------------------------------------

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._request(method, path, **kwargs)
        body = response.json()
        if not isinstance(body, dict):
            raise ServerError("internal", f"{method} {path} answered {type(body).__name__}, not an object", status=response.status_code)
        return body

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise Timeout("request", self.timeout or 0, f"{method} {path}") from None
        except httpx.HTTPError as exc:
            raise _unreachable(self.base_url, exc) from exc
        if response.status_code >= 400:
            raise _http_error(response)
        return response


def _http_error(response: httpx.Response) -> ServerError:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if not isinstance(error, dict):
        error = {"code": HTTP_CODES.get(response.status_code, f"http_{response.status_code}"), "message": response.reason_phrase}
    return ServerError.from_message(error, response.status_code)


def _unreachable(url: str, exc: httpx.HTTPError) -> MineStreamError:
    cause: BaseException | None = exc
    while cause is not None:  # httpx wraps the socket's error; say what it was
        if isinstance(cause, ssl_module.SSLCertVerificationError):
            return CertificateError(url, cause.verify_message or cause.reason or str(cause))
        if isinstance(cause, ssl_module.SSLError):
            return TLSError(url, f"TLS handshake failed ({cause.reason or cause})")
        if isinstance(cause, ConnectionRefusedError):
            return ConnectError(url, "connection refused (is the server running?)")
        cause = cause.__cause__ or cause.__context__
    return ConnectError(url, str(exc) or type(exc).__name__)
