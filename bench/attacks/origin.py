"""Attack 7: state-changing and costly HTTP requests from a foreign web page.

A page on https://evil.example can make a browser send a multipart form, a
``text/plain`` body or (for a server that answers CORS preflights wrongly)
JSON to the loopback server: the browser adds ``Origin``. Each request here
carries ``Origin: https://evil.example``; the same requests without it (a
native client) are the control, so a refusal can be told from a broken
request. Figures: the status codes.
"""

from __future__ import annotations

import io
import json
import wave
from typing import Any

import httpx

from .outcome import Outcome
from .target import Target

EVIL = "https://evil.example"
SPEECH = {"model": "tts-1", "voice": "alloy", "input": "Hello from another site.", "response_format": "pcm"}
DESIGN = {"name": "cross-site", "design": "a calm, clear narrator"}
REFERENCE_TEXT = "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. It is easy to tell the depth of a well."


async def reference_wav(http: httpx.AsyncClient) -> bytes:
    """A few seconds of speech from the server itself, as 24 kHz mono WAV (a usable clone reference)."""
    response = await http.post("/v1/audio/speech", json={**SPEECH, "input": REFERENCE_TEXT})
    response.raise_for_status()
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24000)
        w.writeframes(response.content)
    return out.getvalue()


async def _status(http: httpx.AsyncClient, path: str, origin: str | None, **request: Any) -> int:
    headers = dict(request.pop("headers", {}))
    if origin:
        headers["Origin"] = origin
    async with http.stream("POST", path, headers=headers, **request) as response:
        return response.status_code  # a speech body is not read: the status is the figure


async def cross_site(target: Target) -> Outcome:
    async with target.http() as http:
        wav = await reference_wav(http)
        requests: dict[str, tuple[str, dict[str, Any]]] = {
            "voices multipart": ("/v1/voices", {"files": {"file": ("me.wav", wav, "audio/wav")}, "data": {"name": "cross-site"}}),
            "voices text/plain": ("/v1/voices", {"content": json.dumps(DESIGN), "headers": {"Content-Type": "text/plain"}}),
            "voices JSON": ("/v1/voices", {"json": DESIGN}),
            "speech JSON": ("/v1/audio/speech", {"json": SPEECH}),
            "speech text/plain": ("/v1/audio/speech", {"content": json.dumps(SPEECH), "headers": {"Content-Type": "text/plain"}}),
        }
        foreign = {name: await _status(http, path, EVIL, **dict(req)) for name, (path, req) in requests.items()}
        native = {name: await _status(http, path, None, **dict(req)) for name, (path, req) in requests.items()}
        same_site = await _status(http, "/v1/voices", target.base_url, json=DESIGN)
    figures = {"origin": EVIL, "foreign": foreign, "no_origin": native, "same_origin_voices_json": same_site}
    cell = " · ".join(f"{name} {code}" for name, code in foreign.items())
    cell += f" (no Origin: {', '.join(str(c) for c in native.values())}; own origin {same_site})"
    return Outcome(cell, figures)
