"""Media for WebRTC sessions: the paced speech track out, the microphone in.

``SpeechTrack`` is what aiortc's sender pulls 20 ms frames from. It never
waits on the model: an utterance that has not produced enough audio yet gets
silence, so the stream keeps its clock. Frames are due on an absolute
monotonic schedule (a relative sleep per frame would drift by the loop's
overshoot every frame), except that when speech arrives while the track is
idle the next frame goes out at once and the schedule restarts from there:
the first word does not wait for the next 20 ms tick.

``TrackSink`` is the session's ``AudioSink`` for such a track: 24 kHz in,
48 kHz s16 queued per utterance, in the order the utterances were spoken.
``Microphone`` always drains the incoming track (aiortc's receive queue is
unbounded) and records it into uploads started with ``source: "rtc"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .audio import SAMPLE_RATE, StreamResampler, to_int16
from .errors import BadMessage, UnsupportedAudio
from .ingest import MonoSink, frame_to_mono

log = logging.getLogger("minestream.rtc")

RATE = 48000
FRAME_SAMPLES = RATE // 50  # 20 ms
FRAME_S = FRAME_SAMPLES / RATE
TIME_BASE = fractions.Fraction(1, RATE)
MAX_LATE_S = 0.06
"""A frame this late (a stalled loop) restarts the schedule instead of bursting to catch up."""
QUEUE_HIGH_WATER = 10 * RATE
"""Queued samples per utterance beyond which its producer waits (memory, not latency)."""


@dataclass
class _Queued:
    """One utterance's audio waiting for the track: 48 kHz int16 blocks."""

    id: str
    blocks: deque[np.ndarray] = field(default_factory=deque)
    samples: int = 0
    ended: bool = False
    played: asyncio.Event = field(default_factory=asyncio.Event)
    room: asyncio.Event = field(default_factory=asyncio.Event)
    taken: asyncio.Event = field(default_factory=asyncio.Event)
    """Set whenever the track takes samples (or drops the utterance)."""

    def __post_init__(self) -> None:
        self.room.set()

    def take(self, n: int) -> np.ndarray:
        parts, wanted = [], n
        while wanted and self.blocks:
            block = self.blocks[0]
            if len(block) <= wanted:
                parts.append(self.blocks.popleft())
                wanted -= len(block)
            else:
                parts.append(block[:wanted])
                self.blocks[0] = block[wanted:]
                wanted = 0
        self.samples -= n - wanted
        self.taken.set()
        if self.samples < QUEUE_HIGH_WATER:
            self.room.set()
        if not parts:
            return np.zeros(0, np.int16)
        return np.concatenate(parts) if len(parts) != 1 else parts[0]


class SpeechTrack(MediaStreamTrack):
    """The outgoing audio track: queued speech, else silence, one frame every 20 ms."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: OrderedDict[str, _Queued] = OrderedDict()
        self._start: float | None = None
        self._sent = 0
        self._waiter: asyncio.Future[bool] | None = None
        self.frames_with_speech = 0

    # --- producer side (TrackSink) ---------------------------------------

    def register(self, uid: str) -> None:
        """Reserve the utterance's place in the queue, so utterances play in the order they were spoken."""
        if uid not in self._queue:
            self._queue[uid] = _Queued(uid)

    def push(self, uid: str, samples: np.ndarray) -> None:
        queued = self._queue.get(uid)
        if queued is None or queued.ended or not len(samples):
            return
        queued.blocks.append(samples)
        queued.samples += len(samples)
        if queued.samples >= QUEUE_HIGH_WATER:
            queued.room.clear()
        self._wake()

    async def room(self, uid: str) -> None:
        queued = self._queue.get(uid)
        if queued is not None:
            await queued.room.wait()

    async def played(self, uid: str) -> None:
        """Wait until the utterance's audio queued so far has been sent (it may go on afterwards)."""
        queued = self._queue.get(uid)
        while queued is not None and queued.samples and self._queue.get(uid) is queued:
            queued.taken.clear()
            await queued.taken.wait()

    async def finish(self, uid: str) -> None:
        """Mark the utterance complete and wait until its last sample has been sent."""
        queued = self._queue.get(uid)
        if queued is None:
            return
        queued.ended = True
        self._wake()
        await queued.played.wait()

    def discard(self, uid: str) -> None:
        """Drop the utterance's queued audio at once (cancel): the next frame is not its."""
        queued = self._queue.pop(uid, None)
        if queued is not None:
            queued.played.set()
            queued.room.set()
            queued.taken.set()

    def clear(self) -> None:
        for uid in list(self._queue):
            self.discard(uid)

    # --- consumer side (aiortc's sender) ----------------------------------

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        due = self._start + self._sent * FRAME_S
        if now < due:
            if await self._sleep(due - now, wake_on_audio=not self._ready()):
                self._start = time.monotonic() - self._sent * FRAME_S
        elif now - due > MAX_LATE_S:
            self._start = now - self._sent * FRAME_S
        if self.readyState != "live":
            raise MediaStreamError
        samples = self._next_samples()
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._sent * FRAME_SAMPLES
        frame.time_base = TIME_BASE
        self._sent += 1
        return frame

    def stop(self) -> None:
        self.clear()
        self._wake()
        super().stop()

    def _ready(self) -> bool:
        """Whether a frame of speech can go out now."""
        for queued in self._queue.values():
            if queued.samples >= FRAME_SAMPLES or (queued.ended and queued.samples):
                return True
            if queued.samples or not queued.ended:
                return False
        return False

    def _next_samples(self) -> np.ndarray:
        while self._queue:
            queued = next(iter(self._queue.values()))
            if queued.samples >= FRAME_SAMPLES:
                self.frames_with_speech += 1
                return queued.take(FRAME_SAMPLES)
            if queued.ended:
                tail = queued.take(queued.samples)
                self._queue.popitem(last=False)
                queued.played.set()
                if len(tail):
                    self.frames_with_speech += 1
                    return np.concatenate([tail, np.zeros(FRAME_SAMPLES - len(tail), np.int16)])
                continue
            break  # the head utterance is still being generated: hold its place
        return np.zeros(FRAME_SAMPLES, np.int16)

    async def _sleep(self, delay: float, *, wake_on_audio: bool) -> bool:
        """Sleep ``delay`` s; True if speech arrived first (only when ``wake_on_audio``)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        timer = loop.call_later(delay, _resolve, waiter, False)
        if wake_on_audio:
            self._waiter = waiter
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and self._ready():
            _resolve(self._waiter, True)


def _resolve(waiter: asyncio.Future[bool], value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)


class TrackSink:
    """A session's ``AudioSink`` playing on a ``SpeechTrack`` instead of ``audio`` messages.

    ``end`` returns once the utterance's last sample has gone out, so ``done``
    on the data channel follows the audio rather than preceding it by the
    length of the queue.
    """

    def __init__(self, track: SpeechTrack) -> None:
        self._track = track
        self._resamplers: dict[str, StreamResampler] = {}

    def begin(self, utterance_id: str) -> None:
        self._resamplers[utterance_id] = StreamResampler(RATE)
        self._track.register(utterance_id)

    async def write(self, utterance_id: str, pcm: np.ndarray) -> None:
        resampler = self._resamplers.get(utterance_id)
        if resampler is None:
            return
        if len(pcm):
            self._track.push(utterance_id, to_int16(resampler.process(pcm)))
        await self._track.room(utterance_id)

    async def drain(self, utterance_id: str) -> None:
        await self._track.played(utterance_id)

    async def end(self, utterance_id: str) -> None:
        resampler = self._resamplers.pop(utterance_id, None)
        if resampler is not None:
            self._track.push(utterance_id, to_int16(resampler.process(np.zeros(0, np.float32), last=True)))
        await self._track.finish(utterance_id)

    def discard(self, utterance_id: str) -> None:
        self._resamplers.pop(utterance_id, None)
        self._track.discard(utterance_id)


# --- the microphone -------------------------------------------------------------


class TrackRecording:
    """An upload's decoder for ``source: "rtc"``: PCM from the track, not bytes.

    Same interface as ``ingest.ReferenceDecoder`` (feed, decoded_ms, finish,
    abort), so ``voice_end`` finishes it exactly as it finishes an upload.
    """

    def __init__(self, max_seconds: float) -> None:
        self._sink = MonoSink()
        self._limit = int(2 * max_seconds * SAMPLE_RATE)  # the decoder's hard cap
        self.closed = False

    @property
    def decoded_ms(self) -> int:
        return self._sink.samples * 1000 // SAMPLE_RATE

    @property
    def full(self) -> bool:
        return self._sink.samples >= self._limit

    def add(self, frame: av.AudioFrame) -> None:
        if not self.closed and not self.full:
            mono, rate = frame_to_mono(frame)
            self._sink.add(mono, rate)

    async def feed(self, data: bytes) -> None:
        raise BadMessage("this upload records the WebRTC microphone; it takes no voice_chunk")

    async def finish(self) -> np.ndarray:
        if self.closed:
            raise UnsupportedAudio("This upload has already ended.")
        self.closed = True
        self._sink.flush()
        pcm = self._sink.pcm()
        self._sink = MonoSink()
        return pcm[: self._limit]

    async def abort(self) -> None:
        self.closed = True
        self._sink = MonoSink()


class Microphone:
    """Drains the incoming track for the session's life; records it for uploads (a ``Recorder``)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._recordings: dict[str, tuple[TrackRecording, Callable[[int], None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.frames = 0
        self.last_frame_at: float | None = None

    def attach(self, track: MediaStreamTrack) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._drain(track), name=f"mic-{self._name}")

    def start(self, ref: str, max_seconds: float, progress: Callable[[int], None]) -> TrackRecording:
        recording = TrackRecording(max_seconds)
        self._recordings[ref] = (recording, progress)
        return recording

    def stop(self, ref: str) -> None:
        self._recordings.pop(ref, None)

    async def close(self) -> None:
        self._recordings.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _drain(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if not isinstance(frame, av.AudioFrame):
                    continue
                self.frames += 1
                self.last_frame_at = time.monotonic()
                for recording, progress in list(self._recordings.values()):
                    recording.add(frame)
                    progress(recording.decoded_ms)
