"""``OpenAIEngine``: speech streamed from a remote OpenAI-compatible ``POST /v1/audio/speech``.

So that MineStream's front (the page, WebRTC, ingest, the library) can sit on
speech servers people already run: vLLM-Omni serving Qwen3-TTS, or another
MineStream. Each segment is one request asking for raw 16-bit PCM as it is
made (``response_format: pcm``, ``stream: true``); the body is cut into
chunks as it arrives. Closing the stream closes the response, which is how
such servers learn to stop generating.

Voices map to the fields those servers take: a design to ``instructions``
(with vLLM-Omni's ``task_type: VoiceDesign``), a clone to ``ref_audio`` (a
WAV data URL) and ``ref_text`` (``task_type: Base``). What the remote can do is
asked at start: a MineStream says it in ``/healthz`` (its speech endpoint
designs but takes no reference audio); another server is judged by its
model's name in ``/v1/models``. ``info`` (hence ``ready``) says which.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import struct
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ..audio import StreamResampler, wav_bytes
from ..errors import EngineError, Unavailable
from .base import LANGUAGE_NAMES, SAMPLE_RATE, Engine, EngineInfo, Reference, SynthesisRequest

log = logging.getLogger("minestream.engines.remote")

QWEN_LANGUAGES = ["auto", *LANGUAGE_NAMES.values()]
_MIN_CHUNK_BYTES = 2 * SAMPLE_RATE // 50  # 20 ms: network reads are cut finer than is worth a message
_ERROR_BODY_BYTES = 16384


@dataclass(frozen=True)
class RemoteKind:
    """What a remote server is and can do, as asked at start."""

    name: str
    models: list[str]
    languages: list[str]
    design: bool
    clone: bool
    task_types: bool = False
    """vLLM-Omni's Qwen3-TTS wants ``task_type`` and language names ("English")."""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def kind_of_model(model: str) -> RemoteKind:
    """A non-MineStream server, judged by the model it serves (vLLM-Omni runs one per server)."""
    lowered = model.lower()
    if "qwen3-tts" in lowered:
        if "voicedesign" in lowered:
            return RemoteKind(model, [model], QWEN_LANGUAGES, True, False, True, "Qwen3-TTS VoiceDesign: designs from instructions, no cloning")
        if "base" in lowered:
            return RemoteKind(model, [model], QWEN_LANGUAGES, False, True, True, "Qwen3-TTS Base: clones from ref_audio, no design")
        return RemoteKind(model, [model], QWEN_LANGUAGES, True, False, True, "Qwen3-TTS CustomVoice: instructions steer its stock speakers")
    return RemoteKind(model, [model], ["auto"], True, True, False, "unknown model: design via instructions and cloning via ref_audio are assumed")


def base_url(url: str) -> str:
    """``https://host:port`` from what a user may paste (``…/v1`` or ``…/v1/audio/speech``)."""
    url = url.rstrip("/")
    for suffix in ("/v1/audio/speech", "/v1"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url


class OpenAIEngine(Engine):
    def __init__(
        self,
        url: str,
        *,
        key: str | None = None,
        ca_file: Path | None = None,
        model: str | None = None,
        voice: str = "alloy",
        timeout_s: float = 30.0,
    ) -> None:
        self.url = base_url(url)
        self.model = model
        self.voice = voice
        self._key = key
        self._ca_file = ca_file
        self._timeout = httpx.Timeout(timeout_s, connect=5.0)
        self._client: httpx.AsyncClient | None = None
        self._kind = RemoteKind("remote", [model or "?"], ["auto"], True, False, note="not reached yet")
        self._state = "starting"
        self._streams = 0
        self._references: OrderedDict[str, str] = OrderedDict()
        self.info = self._info()

    def _info(self) -> EngineInfo:
        return EngineInfo(
            name=f"openai-remote:{self._kind.name}",
            kind="openai",
            models=list(self._kind.models),
            languages=list(self._kind.languages),
            design=self._kind.design,
            clone=self._kind.clone,
            note=f"Remote OpenAI-compatible speech at {self.url}: {self._kind.note}",
        )

    async def start(self) -> None:
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        verify: Any = True if self._ca_file is None else ssl.create_default_context(cafile=str(self._ca_file))
        self._client = httpx.AsyncClient(base_url=self.url, headers=headers, verify=verify, timeout=self._timeout)
        if not await self._learn():
            # The front still starts; requests say the remote is unreachable until it answers.
            log.warning("remote engine %s did not answer at start; requests will try again", self.url)

    async def _learn(self) -> bool:
        """Ask the remote what it is; False while it does not answer."""
        assert self._client is not None
        try:
            self._kind = await self._probe(self._client)
        except httpx.HTTPError:
            self._state = "unreachable"
            return False
        self._state = "ready"
        self.info = self._info()
        return True

    async def _probe(self, client: httpx.AsyncClient) -> RemoteKind:
        health = await client.get("/healthz")
        engine = _json(health).get("engine") if health.status_code == 200 else None
        if isinstance(engine, dict) and "design" in engine:
            # Another MineStream: its speech endpoint designs (instructions) and speaks saved voices, takes no reference audio.
            return RemoteKind(
                f"minestream/{engine.get('name', '?')}",
                [str(m) for m in engine.get("models", [])],
                [str(lang) for lang in engine.get("languages", ["auto"])],
                bool(engine.get("design")),
                False,
                note=f"another MineStream ({engine.get('kind', '?')} engine): designs via instructions; cloning is not offered over its speech endpoint",
            )
        models = await client.get("/v1/models")
        listed = [str(m.get("id")) for m in _json(models).get("data", []) if isinstance(m, dict)] if models.status_code == 200 else []
        return kind_of_model(self.model or (listed[0] if listed else "unknown"))

    async def close(self) -> None:
        self._state = "closed"
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- synthesis ---------------------------------------------------------

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[np.ndarray]:
        if self._client is None:
            raise Unavailable("the remote engine is not started")
        if self._state == "unreachable" and not await self._learn():
            raise Unavailable(f"the remote engine at {self.url} is unreachable")
        body = self._body(request)
        self._streams += 1
        try:
            async with self._client.stream("POST", "/v1/audio/speech", json=body) as response:
                await self._check(response)
                self._state = "ready"
                async for chunk in _pcm_chunks(response):
                    yield chunk
        except httpx.TransportError as exc:
            if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
                self._state = "unreachable"
                raise Unavailable(f"the remote engine at {self.url} is unreachable: {exc}") from exc
            raise EngineError(f"the remote engine at {self.url} broke off the audio: {exc or type(exc).__name__}") from exc
        finally:
            self._streams -= 1

    def _body(self, request: SynthesisRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"input": request.text, "response_format": "pcm", "stream": True}
        if self.model:
            body["model"] = self.model
        if request.language != "auto":
            code = request.language.lower().split("-")[0]
            body["language"] = LANGUAGE_NAMES.get(code, request.language).capitalize() if self._kind.task_types else request.language
        voice = request.voice
        if voice.reference is not None and self._kind.clone:
            body.update(self._clone_fields(voice.reference))
        elif voice.design is not None and self._kind.design:
            body.update(instructions=voice.design, voice=self.voice)
            if self._kind.task_types:
                body["task_type"] = "VoiceDesign"
        else:
            raise Unavailable(f"the remote engine at {self.url} cannot {'clone' if voice.reference is not None else 'design'} voices")
        return body

    def _clone_fields(self, reference: Reference) -> dict[str, Any]:
        fields: dict[str, Any] = {"ref_audio": self._data_url(reference), "x_vector_only_mode": not reference.text}
        if reference.text:
            fields["ref_text"] = reference.text
        if self._kind.task_types:
            fields["task_type"] = "Base"
        return fields

    def _data_url(self, reference: Reference) -> str:
        """The reference as a WAV data URL, encoded once per reference key."""
        key = reference.key or str(id(reference.audio))
        url = self._references.get(key)
        if url is None:
            url = "data:audio/wav;base64," + base64.b64encode(wav_bytes(reference.audio)).decode()
            self._references[key] = url
            while len(self._references) > 16:
                self._references.popitem(last=False)
        return url

    async def _check(self, response: httpx.Response) -> None:
        if response.status_code == 200:
            return
        raw = b""
        async for piece in response.aiter_bytes():
            raw += piece
            if len(raw) >= _ERROR_BODY_BYTES:
                break
        message = _error_message(raw) or response.reason_phrase
        error = Unavailable if response.status_code in (502, 503, 504) else EngineError
        raise error(f"the remote engine answered {response.status_code}: {message}")

    def health(self) -> dict[str, Any]:
        return {"state": self._state, "remote": self.url, "active_streams": self._streams}


async def _pcm_chunks(response: httpx.Response) -> AsyncIterator[np.ndarray]:
    """The body as 24 kHz float32 chunks: raw 16-bit PCM, or a WAV stream whose header says its rate."""
    rate = int(response.headers.get("x-sample-rate") or SAMPLE_RATE)
    pending = b""
    header_done = False
    resampler: StreamResampler | None = None
    async for piece in response.aiter_bytes():
        pending += piece
        if not header_done:
            if pending[:4] == b"RIFF":
                parsed = _wav_header(pending)
                if parsed is None:
                    continue
                rate, offset = parsed
                pending = pending[offset:]
            header_done = True
            resampler = StreamResampler(SAMPLE_RATE, rate_in=rate)
        if len(pending) < _MIN_CHUNK_BYTES:
            continue
        whole = len(pending) - len(pending) % 2
        samples, pending = pending[:whole], pending[whole:]
        assert resampler is not None
        chunk = resampler.process(np.frombuffer(samples, dtype="<i2").astype(np.float32) / 32768.0)
        if chunk.size:
            yield chunk
    if resampler is not None:
        whole = len(pending) - len(pending) % 2
        tail = resampler.process(np.frombuffer(pending[:whole], dtype="<i2").astype(np.float32) / 32768.0, last=True)
        if tail.size:
            yield tail


def _wav_header(data: bytes) -> tuple[int, int] | None:
    """(sample rate, offset of the samples) of a 16-bit mono WAV's start, or None until enough has come."""
    offset, rate = 12, None
    while offset + 8 <= len(data):
        chunk_id, size = data[offset : offset + 4], struct.unpack("<I", data[offset + 4 : offset + 8])[0]
        if chunk_id == b"fmt ":
            if offset + 24 > len(data):
                return None
            _, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[offset + 8 : offset + 24])
            if channels != 1 or bits != 16:
                raise EngineError("the remote engine sent WAV that is not 16-bit mono")
        elif chunk_id == b"data":
            if rate is None:
                raise EngineError("the remote engine sent WAV without a format chunk")
            return int(rate), offset + 8
        offset += 8 + size + (size & 1)
    return None


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _error_message(raw: bytes) -> str:
    try:
        data = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip()[:300]
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)[:300]
    return str(data.get("detail") or data.get("message") or data)[:300] if isinstance(data, dict) else str(data)[:300]

