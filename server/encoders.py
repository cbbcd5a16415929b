"""Streaming audio encoders: the engine's 24 kHz mono float32 chunks in, bytes ready to send out.

The formats are OpenAI's ``response_format`` names: mp3, opus (in Ogg), aac
(ADTS), flac, wav (a header of unknown length, then 16-bit samples) and pcm
(16-bit little-endian samples, no header). ``encoder(format)`` makes one for a
stream; ``encode(chunk)`` returns the bytes that chunk completes (none while a
codec is still filling its first frame), ``finish()`` the tail. All of them
together are a valid file of the format, and each piece can be sent, and
played, as it comes: nothing already returned is ever rewritten (mp3, aac and
flac go through FFmpeg's muxers to a sink that cannot seek, so a FLAC header
keeps "length unknown" and an MP3 has no Xing header).

Opus is framed in Ogg here (``server.ogg``), each chunk ending its page, so a
chunk's bytes are playable on arrival (the socket's ``format: "opus"`` sends
them as one message). Opus works at 48 kHz; a 48 kHz stream is resampled from
24 kHz in one continuous stream, without seams.

Encoding is CPU work (bench/encoders.py measures it). An encoder is one stream
and is not thread-safe: its owner calls it from one thread at a time, the
thread of its choosing (a worker, not the event loop).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any

import av
import numpy as np

from .audio import StreamResampler, streaming_wav_header, to_int16, to_pcm_bytes
from .engines.base import SAMPLE_RATE
from .ogg import OggStream

FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
DEFAULT_BITRATES = {"mp3": 64_000, "opus": 32_000, "aac": 64_000}
"""Bits per second for speech at 24 kHz; Opus at 32 kb/s is about a twelfth of 16-bit PCM."""
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


class Encoder(ABC):
    """One stream of one format: ``encode`` each chunk, then ``finish`` (or ``close`` to abandon it)."""

    format: str

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.content_type = CONTENT_TYPES[self.format]
        self._resampler = StreamResampler(sample_rate)
        self._finished = False

    def encode(self, pcm: np.ndarray) -> bytes:
        """The bytes ``pcm`` (24 kHz mono, float32 in [-1, 1]) completes; may be empty."""
        if self._finished:
            raise RuntimeError(f"the {self.format} stream is finished")
        return self._encode(self._resampler.process(_clean(pcm)))

    def finish(self) -> bytes:
        """The end of the stream: the codec's last frames and the container's trailer."""
        if self._finished:
            raise RuntimeError(f"the {self.format} stream is finished")
        tail = self._encode(self._resampler.process(np.zeros(0, np.float32), last=True))
        self._finished = True
        return tail + self._finish()

    def close(self) -> None:
        """Abandons the stream (the listener left): frees the codec, returns nothing."""
        self._finished = True

    @abstractmethod
    def _encode(self, pcm: np.ndarray) -> bytes: ...

    @abstractmethod
    def _finish(self) -> bytes: ...


def encoder(format: str, sample_rate: int = SAMPLE_RATE, *, bitrate: int | None = None) -> Encoder:
    """An encoder for one stream of ``format`` (one of ``FORMATS``) at ``sample_rate``."""
    if format not in FORMATS:
        raise ValueError(f"unknown audio format {format!r}: use one of {', '.join(FORMATS)}")
    if not 8000 <= sample_rate <= 48000:
        raise ValueError(f"sample rate {sample_rate} Hz is outside 8000-48000")
    if format == "pcm":
        return PcmEncoder(sample_rate)
    if format == "wav":
        return WavEncoder(sample_rate)
    if format == "opus":
        return OpusEncoder(sample_rate, bitrate or DEFAULT_BITRATES["opus"])
    return MuxedEncoder(format, sample_rate, bitrate)


def _clean(pcm: np.ndarray) -> np.ndarray:
    samples = np.asarray(pcm, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"expected mono samples (one dimension), got shape {samples.shape}")
    return np.clip(np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)


class PcmEncoder(Encoder):
    format = "pcm"

    def _encode(self, pcm: np.ndarray) -> bytes:
        return to_pcm_bytes(pcm, "pcm_s16le")

    def _finish(self) -> bytes:
        return b""


class WavEncoder(PcmEncoder):
    """16-bit mono WAV whose header, sent first, says "length unknown" (players read to the end)."""

    format = "wav"

    def __init__(self, sample_rate: int) -> None:
        super().__init__(sample_rate)
        self._header = streaming_wav_header(sample_rate)

    def _encode(self, pcm: np.ndarray) -> bytes:
        header, self._header = self._header, b""
        return header + super()._encode(pcm)

    def _finish(self) -> bytes:
        header, self._header = self._header, b""
        return header


class _Sink:
    """Where a muxer writes: collects bytes until taken. No ``seek``: nothing sent is rewritten."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: Any) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


# FFmpeg (container, codec, sample format the codec takes, muxer options).
_MUXED: dict[str, tuple[str, str, str, dict[str, str]]] = {
    "mp3": ("mp3", "libmp3lame", "fltp", {"id3v2_version": "0", "write_xing": "0"}),
    "aac": ("adts", "aac", "fltp", {}),
    "flac": ("flac", "flac", "s16", {"metadata_header_padding": "0"}),
}


class MuxedEncoder(Encoder):
    """mp3, aac (ADTS) and flac: FFmpeg's encoder and muxer, writing to a sink drained after every chunk."""

    def __init__(self, format: str, sample_rate: int, bitrate: int | None) -> None:
        self.format = format
        super().__init__(sample_rate)
        container_format, codec, self._sample_format, options = _MUXED[format]
        self._sink = _Sink()
        self._container: Any = av.open(self._sink, "w", format=container_format, options={**options, "fflags": "+bitexact"})
        self._stream: Any = self._container.add_stream(codec, rate=sample_rate, layout="mono")
        if format in DEFAULT_BITRATES:
            self._stream.codec_context.bit_rate = bitrate or DEFAULT_BITRATES[format]
        self._samples = 0

    def _encode(self, pcm: np.ndarray) -> bytes:
        if len(pcm):
            self._mux(self._stream.encode(self._frame(pcm)))
        return self._sink.take()

    def _finish(self) -> bytes:
        self._mux(self._stream.encode(None))
        self._container.close()
        return self._sink.take()

    def close(self) -> None:
        if not self._finished:
            self._container.close()
        super().close()

    def _frame(self, pcm: np.ndarray) -> av.AudioFrame:
        samples = to_int16(pcm) if self._sample_format == "s16" else pcm
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format=self._sample_format, layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._samples
        self._samples += len(pcm)
        return frame

    def _mux(self, packets: list[Any]) -> None:
        for packet in packets:
            self._container.mux(packet)


class OpusEncoder(Encoder):
    """Opus in Ogg (RFC 7845), 20 ms packets, each chunk's packets flushed as their own pages.

    libopus (through PyAV) makes the packets and the identification header
    (its pre-skip, the input rate); the pages are written by ``OggStream``.
    A page's granule position counts 48 kHz samples, pre-skip included, to
    the end of its last packet, so the last page trims the final frame's
    padding.
    """

    format = "opus"

    def __init__(self, sample_rate: int, bitrate: int) -> None:
        if sample_rate not in OPUS_RATES:
            raise ValueError(f"Opus takes {', '.join(map(str, OPUS_RATES))} Hz, not {sample_rate}")
        super().__init__(sample_rate)
        codec: Any = av.CodecContext.create("libopus", "w")
        codec.sample_rate = sample_rate
        codec.layout = "mono"
        codec.format = "flt"
        codec.bit_rate = bitrate
        codec.open()
        self._codec = codec
        head = bytes(codec.extradata)  # "OpusHead": version, channels, pre-skip, input rate, gain, mapping
        self._pre_skip = int.from_bytes(head[10:12], "little")
        self._ogg = OggStream(int.from_bytes(os.urandom(4), "little"))
        vendor = b"MineStream (libopus via PyAV)"
        tags = b"OpusTags" + len(vendor).to_bytes(4, "little") + vendor + (0).to_bytes(4, "little")
        self._headers = self._ogg.pages([(head, 0)], first=True) + self._ogg.pages([(tags, 0)])
        self._samples = 0

    def _encode(self, pcm: np.ndarray) -> bytes:
        packets = self._codec.encode(self._frame(pcm)) if len(pcm) else []
        return self._take_headers() + self._ogg.pages([self._granuled(p) for p in packets])

    def _finish(self) -> bytes:
        return self._take_headers() + self._ogg.pages([self._granuled(p) for p in self._codec.encode(None)], last=True)

    def _take_headers(self) -> bytes:
        headers, self._headers = self._headers, b""
        return headers

    def _frame(self, pcm: np.ndarray) -> av.AudioFrame:
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._samples
        self._samples += len(pcm)
        return frame

    def _granuled(self, packet: Any) -> tuple[bytes, int]:
        # pts counts from minus the pre-skip, in samples at the input rate.
        end = (packet.pts + packet.duration) * 48000 // self.sample_rate
        return bytes(packet), end + self._pre_skip
