"""One session's reference uploads: ``voice_begin``, ``voice_chunk``, ``voice_end``.

An upload's bytes are decoded as they arrive (``ingest.ReferenceDecoder``, a
PyAV thread per upload), or its audio comes from a ``Recorder`` named by
``voice_begin.source`` (the WebRTC microphone registers as ``"rtc"``). At
``voice_end`` the reference is trimmed, normalised and checked, then saved in
the library, and ``voice`` names the new voice.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from . import metrics
from .config import Limits
from .engines.base import Engine
from .errors import BadMessage, DuplicateId, LimitExceeded, MineStreamError, Unavailable, UnknownId
from .ingest import ReferenceDecoder
from .protocol import Progress, ServerConnection, VoiceBegin, VoiceChunk, VoiceEnd, VoiceSaved
from .reference import prepare_reference
from .voices import VoiceLibrary

PROGRESS_EVERY_MS = 200
_FAILED_REMEMBERED = 64


class UploadDecoder(Protocol):
    """Turns an upload into 24 kHz PCM."""

    @property
    def decoded_ms(self) -> int: ...

    async def feed(self, data: bytes) -> None: ...

    async def finish(self) -> np.ndarray: ...

    async def abort(self) -> None: ...


class Recorder(Protocol):
    """A source of reference audio other than ``voice_chunk`` bytes."""

    def start(self, ref: str, max_seconds: float, progress: Callable[[int], None]) -> UploadDecoder:
        """Begin recording for ``ref``; ``progress(decoded_ms)`` is called as audio comes in."""
        ...

    def stop(self, ref: str) -> None: ...


@dataclass
class _Upload:
    ref: str
    name: str | None
    ref_text: str | None
    decoder: UploadDecoder
    recorder: Recorder | None = None
    reported_ms: int = 0


class Uploads:
    def __init__(
        self,
        connection: ServerConnection,
        engine: Engine,
        library: VoiceLibrary,
        limits: Limits,
        recorders: Mapping[str, Recorder] | None = None,
    ) -> None:
        self._connection = connection
        self._engine = engine
        self._library = library
        self._limits = limits
        self._recorders = dict(recorders or {})
        self._open: dict[str, _Upload] = {}
        self._failed: OrderedDict[str, bool] = OrderedDict()
        """Refs whose upload failed; True once a later chunk was answered."""

    def __len__(self) -> int:
        return len(self._open)

    async def begin(self, begin: VoiceBegin) -> None:
        if begin.ref in self._open:
            raise DuplicateId(f"upload {begin.ref!r} is already open", ref=begin.ref)
        if len(self._open) >= self._limits.max_uploads:
            raise LimitExceeded(f"at most {self._limits.max_uploads} uploads may be open at once", ref=begin.ref)
        if not self._engine.info.clone:
            raise Unavailable("this engine cannot clone voices", ref=begin.ref)
        self._failed.pop(begin.ref, None)
        recorder = self._recorder(begin)
        decoder: UploadDecoder
        if recorder is None:
            decoder = ReferenceDecoder(begin.mime, max_seconds=self._limits.max_ref_seconds)
        else:
            decoder = recorder.start(begin.ref, self._limits.max_ref_seconds, functools.partial(self._recorded, begin.ref))
        self._open[begin.ref] = _Upload(begin.ref, begin.name, begin.ref_text, decoder, recorder)

    def _recorded(self, ref: str, decoded_ms: int) -> None:
        upload = self._open.get(ref)
        if upload is not None:
            self._progress(upload, decoded_ms)

    def _recorder(self, begin: VoiceBegin) -> Recorder | None:
        if begin.source is None:
            return None
        recorder = self._recorders.get(begin.source)
        if recorder is None:
            if begin.source == "rtc":
                raise BadMessage("source 'rtc' needs a WebRTC session", ref=begin.ref)
            raise BadMessage(f"unknown source {begin.source[:32]!r}", ref=begin.ref)
        return recorder

    async def chunk(self, chunk: VoiceChunk) -> None:
        upload = self._open.get(chunk.ref)
        if upload is None:
            self._unknown(chunk.ref)
            return
        if not chunk.data:
            return  # Safari sends empty timeslices.
        try:
            await upload.decoder.feed(chunk.data)
        except MineStreamError:
            await self._abandon(upload)
            self._failed[upload.ref] = False
            while len(self._failed) > _FAILED_REMEMBERED:
                self._failed.popitem(last=False)
            raise
        self._progress(upload, upload.decoder.decoded_ms)

    def _unknown(self, ref: str) -> None:
        """A chunk for no open upload: an error, but only once for an upload that failed."""
        answered = self._failed.get(ref)
        if answered is None:
            raise UnknownId(f"no open upload {ref!r}", ref=ref)
        if not answered:
            self._failed[ref] = True
            raise UnknownId(f"upload {ref!r} failed earlier; its later chunks are ignored", ref=ref)

    def _progress(self, upload: _Upload, decoded_ms: int) -> None:
        if decoded_ms - upload.reported_ms >= PROGRESS_EVERY_MS:
            upload.reported_ms = decoded_ms
            self._connection.send(Progress(upload.ref, decoded_ms))

    async def end(self, end: VoiceEnd) -> None:
        upload = self._open.pop(end.ref, None)
        if upload is None:
            if self._failed.pop(end.ref, None) is not None:
                return  # its error has been sent already
            raise UnknownId(f"no open upload {end.ref!r}", ref=end.ref)
        if upload.recorder is not None:
            upload.recorder.stop(end.ref)
        began = time.monotonic()
        try:
            pcm = await upload.decoder.finish()
            audio = await asyncio.to_thread(prepare_reference, pcm, max_seconds=self._limits.max_ref_seconds)
        finally:
            await upload.decoder.abort()
        metrics.DECODE_SECONDS.observe(time.monotonic() - began)
        record = await self._library.save(name=upload.name or "", kind="clone", audio=audio, ref_text=upload.ref_text)
        self._connection.send(VoiceSaved(end.ref, record.id, record.name, record.duration_ms))

    async def close(self) -> None:
        for upload in list(self._open.values()):
            await self._abandon(upload)

    async def _abandon(self, upload: _Upload) -> None:
        self._open.pop(upload.ref, None)
        if upload.recorder is not None:
            upload.recorder.stop(upload.ref)
        await upload.decoder.abort()
