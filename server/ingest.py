"""Decode uploaded reference recordings to float32 mono 24 kHz PCM, as they arrive.

Browsers record with MediaRecorder in timeslices and send each piece as soon as
it exists, so decoding runs alongside the upload: when the person stops
talking, the audio is already PCM and the voice is ready in a few ms.

``ReferenceDecoder`` (one per upload) owns one worker thread. The thread runs
PyAV on a blocking file-like ``_Pipe`` that ``feed`` appends to: the demuxer
simply waits for the next bytes, so each byte is parsed once (re-opening the
growing buffer per chunk would be quadratic). The container format is sniffed
from the first bytes and given to PyAV explicitly, because auto-detection waits
for 2 KB and would stall on a short first chunk.

Non-fragmented MP4 with its index (moov) after the media cannot be streamed;
it is kept in memory and decoded from there at ``finish``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import itertools
import threading
import weakref

import av
import numpy as np
import soxr

from .audio import SAMPLE_RATE
from .containers import CONTAINER_NAMES, RETRY, STREAMING, WHOLE, FormatSniffer
from .errors import LimitExceeded, MineStreamError, UnsupportedAudio

MAX_RAW_BYTES = 64 * 1024 * 1024
"""Compressed bytes one upload may send, whatever they decode to."""

CATCH_UP_S = 0.25
"""How long ``feed`` waits for the worker to decode what it was given. This is
backpressure (a fast sender cannot pile up undecoded bytes) and keeps
``decoded_ms`` current for ``progress``."""

IDLE_TIMEOUT_S = 300.0
"""A worker that receives nothing for this long gives up and frees itself."""

ABORT_WAIT_S = 1.0
THREAD_PREFIX = "ingest-"

# Probing is pointless once the format is known and would make the demuxer
# wait for more bytes before it decodes the first packet.
_OPEN_OPTIONS = {"probesize": "32", "analyzeduration": "0"}
_AVIO_BUFFER = 4096
_thread_ids = itertools.count(1)


# -- PCM: any frame to mono 24 kHz -----------------------------------------

_SCALE = {"s16": 1 / 32768, "s32": 1 / 2147483648, "u8": 1 / 128}


def frame_to_mono(frame: av.AudioFrame) -> tuple[np.ndarray, int]:
    """One frame as mono float32 at its own rate.

    Channels are averaged, not summed: a stereo recording of one voice has the
    same signal in both channels, and summing (ffmpeg's default downmix,
    L+R at -3 dB each) would raise its level by 3 dB and could clip.
    """
    arr = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar and channels > 1:
        arr = arr.reshape(-1, channels).T
    kind = frame.format.name.rstrip("p")
    if kind == "u8":
        arr = arr.astype(np.float32) - 128
    mono = arr.mean(axis=0, dtype=np.float32) if channels > 1 else arr[0].astype(np.float32, copy=False)
    if kind in _SCALE:
        mono = mono * np.float32(_SCALE[kind])
    return mono, frame.sample_rate


class MonoSink:
    """Collects mono blocks at 24 kHz; one resampler per input rate, flushed on change."""

    def __init__(self) -> None:
        self.blocks: list[np.ndarray] = []
        self.samples = 0  # read from the event loop for `progress`
        self._rate = 0
        self._rs: soxr.ResampleStream | None = None

    def add(self, mono: np.ndarray, rate: int) -> None:
        if rate != self._rate:
            self.flush()
            self._rate = rate
            if rate != SAMPLE_RATE:
                self._rs = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")
        self._push(mono if self._rs is None else self._rs.resample_chunk(mono))

    def flush(self) -> None:
        if self._rs is not None:
            self._push(self._rs.resample_chunk(np.zeros(0, np.float32), last=True))
        self._rs = None
        self._rate = 0

    def _push(self, block: np.ndarray) -> None:
        if block.size:
            self.blocks.append(block)
            self.samples += block.size

    def pcm(self) -> np.ndarray:
        if not self.blocks:
            return np.zeros(0, np.float32)
        return np.concatenate(self.blocks).astype(np.float32, copy=False)


# -- the worker --------------------------------------------------------------

class _Pipe:
    """A blocking, non-seekable byte stream for PyAV: ``read`` waits for ``write``."""

    def __init__(self, idle_timeout: float) -> None:
        self._chunks: list[memoryview] = []
        self._cv = threading.Condition()
        self._eof = False
        self.aborted = False
        self.stalled = False  # nothing arrived for idle_timeout: the reader gave up
        self._reader_idle = False  # the reader is blocked waiting for bytes
        self.idle_timeout = idle_timeout
        self._drain_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def seekable(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        with self._cv:
            if not (self._eof or self.aborted):
                self._chunks.append(memoryview(data))
                self._cv.notify()

    def close(self) -> None:
        """End of upload: the demuxer sees EOF once it has read everything."""
        with self._cv:
            self._eof = True
            self._cv.notify()

    def abort(self) -> None:
        """Drop everything; the demuxer sees EOF at its next read."""
        with self._cv:
            self.aborted = True
            self._chunks.clear()
            self._cv.notify()
        self.wake_drain_waiters()

    def read(self, n: int) -> bytes:
        with self._cv:
            if not self._chunks and not (self._eof or self.aborted or self.stalled):
                self._reader_idle = True
                self._wake_drain_waiters_locked()
                ready = self._cv.wait_for(self._readable, timeout=self.idle_timeout)
                self._reader_idle = False
                # PyAV may swallow exceptions raised here (a demuxer treats a read
                # error as EOF), so a stall ends the stream and is reported after.
                self.stalled = self.stalled or not ready
            if self.aborted or self.stalled or not self._chunks:
                return b""
            head = self._chunks[0]
            out = bytes(head[:n])
            if len(head) > n:
                self._chunks[0] = head[n:]
            else:
                self._chunks.pop(0)
            return out

    def drained_at_eof(self) -> bool:
        """The upload ended and every byte of it was read."""
        with self._cv:
            return self._eof and not self._chunks

    def _readable(self) -> bool:
        return bool(self._chunks) or self._eof or self.aborted

    def add_drain_waiter(self) -> asyncio.Future[None] | None:
        """A future resolved once the reader has consumed everything (None if it has)."""
        loop = asyncio.get_running_loop()
        with self._cv:
            if (self._reader_idle and not self._chunks) or self._eof or self.aborted:
                return None
            fut: asyncio.Future[None] = loop.create_future()
            self._drain_waiters.append((loop, fut))
            return fut

    def wake_drain_waiters(self) -> None:
        with self._cv:
            self._wake_drain_waiters_locked()

    def _wake_drain_waiters_locked(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, fut)
            except RuntimeError:  # the loop is closed; nobody is waiting any more
                pass


def _consume(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _decode_into(source: object, fmt: str, sink: MonoSink, limit: int, pipe: _Pipe | None) -> None:
    """Demux and decode ``source`` until EOF, pushing mono 24 kHz blocks into ``sink``."""
    try:
        with av.open(source, mode="r", format=fmt, options=_OPEN_OPTIONS,
                     buffer_size=_AVIO_BUFFER) as container:
            if not container.streams.audio:
                raise UnsupportedAudio("The recording contains no audio track. " + RETRY)
            _demux(container, container.streams.audio[0], sink, limit, pipe)
    except (av.FFmpegError, ValueError, EOFError) as exc:  # ValueError: bad frame layouts
        if pipe is not None and pipe.stalled:
            raise _stalled(pipe) from None
        if not (pipe is not None and pipe.drained_at_eof() and sink.samples > 0):
            raise UnsupportedAudio(
                f"The audio could not be decoded as {CONTAINER_NAMES[fmt]}: it looks damaged "
                f"({exc.__class__.__name__}). " + RETRY
            ) from exc
        # The upload ended inside a block (a recorder cut off mid-write): the
        # audio before it is good, so keep it, as for formats that stop quietly.
    if pipe is not None and pipe.stalled:
        raise _stalled(pipe)
    sink.flush()


def _stalled(pipe: _Pipe) -> UnsupportedAudio:
    return UnsupportedAudio(f"The upload stalled: nothing arrived for {pipe.idle_timeout:g} s. Record again.")


def _demux(container: av.container.InputContainer, stream: av.AudioStream, sink: MonoSink,
           limit: int, pipe: _Pipe | None) -> None:
    for packet in container.demux(stream):
        if pipe is not None and pipe.aborted:
            return
        for frame in packet.decode():
            sink.add(*frame_to_mono(frame))
        if sink.samples > limit:
            raise LimitExceeded(
                f"The recording is longer than {limit / SAMPLE_RATE:.0f} s. "
                "Record 5-20 seconds of speech."
            )


def _worker(source: object, fmt: str, sink: MonoSink, limit: int, pipe: _Pipe | None,
            done: concurrent.futures.Future[None]) -> None:
    done.set_running_or_notify_cancel()
    error: BaseException | None = None
    try:
        _decode_into(source, fmt, sink, limit, pipe)
    except BaseException as exc:  # noqa: BLE001 - handed to the event loop, never lost
        error = exc
    if pipe is not None:
        # Nothing reads the pipe any more: drop what is left, release feeders.
        pipe.abort()
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


class ReferenceDecoder:
    """One per upload; owns one worker thread that runs PyAV."""

    def __init__(self, mime: str | None = None, *, max_seconds: float = 30.0,
                 idle_timeout: float = IDLE_TIMEOUT_S) -> None:
        self._sniffer = FormatSniffer(mime)
        self._limit = int(2 * max_seconds * SAMPLE_RATE)
        self._sink = MonoSink()
        self._pipe = _Pipe(idle_timeout)
        self._whole: list[bytes] | None = None  # set when the format cannot stream
        self._fmt: str | None = None
        self._done: concurrent.futures.Future[None] | None = None
        self._thread: threading.Thread | None = None
        self._raw_bytes = 0
        self._pieces = 0
        self._error: MineStreamError | None = None
        self._closed = False
        # A decoder dropped without abort() must not leave its thread blocked.
        weakref.finalize(self, self._pipe.abort)

    @property
    def decoded_ms(self) -> int:
        return self._sink.samples * 1000 // SAMPLE_RATE

    @property
    def format(self) -> str | None:
        """The container format, once sniffed."""
        return self._fmt

    async def feed(self, data: bytes) -> None:
        """Queue one piece for decoding; raises once the upload is known bad."""
        self._raise_if_failed()
        if self._closed:
            raise UnsupportedAudio("This upload has already ended.")
        if not data:
            return  # Safari sends empty pieces
        self._pieces += 1
        self._raw_bytes += len(data)
        if self._raw_bytes > MAX_RAW_BYTES:
            await self._fail(LimitExceeded(
                f"The upload is larger than {MAX_RAW_BYTES >> 20} MB. Record 5-20 seconds."))
        if self._fmt is None:
            await self._sniff(data, final=False)
        else:
            await self._check_piece(data)
            self._push(data)
        await self._catch_up()
        self._raise_if_failed()

    async def finish(self) -> np.ndarray:
        """Everything decoded, as float32 mono 24 kHz PCM."""
        self._raise_if_failed()
        if self._closed:
            raise UnsupportedAudio("This upload has already ended.")
        self._closed = True
        try:
            if self._fmt is None:
                await self._sniff(b"", final=True)
            if self._whole is not None:
                self._start(io.BytesIO(b"".join(self._whole)), pipe=None)
                self._whole = None
            self._pipe.close()
            assert self._done is not None
            await asyncio.wrap_future(self._done)
        except BaseException:
            await self.abort()
            raise
        pcm = self._sink.pcm()
        self._sink = MonoSink()
        return pcm

    async def abort(self) -> None:
        """Stop decoding and free everything; safe to call any number of times."""
        self._closed = True
        self._pipe.abort()
        self._whole = None
        if self._done is not None and not self._done.done():
            wrapped = asyncio.wrap_future(self._done)
            wrapped.add_done_callback(_consume)  # an abandoned upload's error is moot
            await asyncio.wait([wrapped], timeout=ABORT_WAIT_S)
        self._sink = MonoSink()

    # -- internals --------------------------------------------------------

    async def _sniff(self, data: bytes, *, final: bool) -> None:
        try:
            decision = self._sniffer.add(data, final=final)
        except UnsupportedAudio as exc:
            await self._fail(exc)
        if decision is None:
            return
        self._fmt, mode = decision
        head = self._sniffer.take_head()
        if mode == WHOLE:
            self._whole = [head]
        else:
            assert mode == STREAMING
            self._start(self._pipe, pipe=self._pipe)
            self._pipe.write(head)

    async def _check_piece(self, data: bytes) -> None:
        assert self._fmt is not None
        problem = self._sniffer.foreign_piece(data, self._fmt, self._pieces)
        if problem:
            await self._fail(UnsupportedAudio(problem))

    def _push(self, data: bytes) -> None:
        if self._whole is not None:
            self._whole.append(data)
        else:
            self._pipe.write(data)

    def _start(self, source: object, pipe: _Pipe | None) -> None:
        self._done = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=_worker,
            args=(source, self._fmt, self._sink, self._limit, pipe, self._done),
            name=f"{THREAD_PREFIX}{next(_thread_ids)}",
            daemon=True,
        )
        self._thread.start()

    async def _catch_up(self) -> None:
        waiter = self._pipe.add_drain_waiter() if self._done is not None else None
        if waiter is not None:
            await asyncio.wait([waiter], timeout=CATCH_UP_S)

    def _raise_if_failed(self) -> None:
        if self._error is None and self._done is not None and self._done.done():
            exc = self._done.exception()
            if isinstance(exc, MineStreamError):
                self._error = exc
            elif exc is not None:
                self._error = UnsupportedAudio(f"The audio could not be decoded ({exc}).")
        if self._error is not None:
            self._closed = True
            raise self._error

    async def _fail(self, exc: MineStreamError) -> None:
        self._error = exc
        await self.abort()
        raise exc


async def decode_bytes(data: bytes, mime: str | None = None, *,
                       max_seconds: float = 30.0) -> np.ndarray:
    """Decode a whole upload (POST /v1/voices) with the same decoder."""
    dec = ReferenceDecoder(mime, max_seconds=max_seconds)
    try:
        await dec.feed(data)
        return await dec.finish()
    finally:
        await dec.abort()
