"""Which container an upload is, from its first bytes and its MIME hint.

Browsers and clients mislabel uploads (Chrome's "audio/mp4" is Opus in
fragmented MP4; files arrive as application/octet-stream), so the bytes
decide, and the hint only settles what the bytes cannot. Non-fragmented MP4
whose index comes after the media is told apart: it cannot be streamed.
"""

from __future__ import annotations

from .errors import UnsupportedAudio

STREAMING, WHOLE = "streaming", "whole"
SNIFF_BYTES = 12
MAX_HEAD_BYTES = 1 << 20  # MP4 boxes before moov/mdat; more is not a recording
SUPPORTED = "WebM, Ogg, MP4, WAV, FLAC or MP3"
RETRY = f"Record again, or upload {SUPPORTED} audio."

_EBML = b"\x1a\x45\xdf\xa3"
_CLUSTER = b"\x1f\x43\xb6\x75"
_MIME_FORMATS = {
    "webm": "matroska", "matroska": "matroska", "x-matroska": "matroska", "ogg": "ogg",
    "opus": "ogg", "mp4": "mp4", "x-m4a": "mp4", "m4a": "mp4", "aac": "aac", "wav": "wav",
    "x-wav": "wav", "wave": "wav", "vnd.wave": "wav", "flac": "flac", "x-flac": "flac",
    "mpeg": "mp3", "mp3": "mp3",
}
CONTAINER_NAMES = {"matroska": "WebM", "ogg": "Ogg", "mp4": "MP4", "wav": "WAV", "flac": "FLAC",
          "mp3": "MP3", "aac": "AAC"}


def mime_format(mime: str | None) -> str | None:
    """The format a MIME type names ('audio/webm;codecs=opus' -> 'matroska')."""
    if not mime:
        return None
    subtype = mime.split(";", 1)[0].strip().lower().rpartition("/")[2]
    return _MIME_FORMATS.get(subtype)


def magic_format(head: bytes) -> str | None:
    """The container a file header starts, from its first 12 bytes."""
    if head.startswith(_EBML):
        return "matroska"
    if head.startswith(b"OggS"):
        return "ogg"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"ID3"):
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "aac" if head[1] & 0x06 == 0 else "mp3"  # ADTS has layer bits 00
    return None


def mp4_layout(head: bytes) -> str | None:
    """STREAMING if moov precedes the media, WHOLE if not, None if unknown yet."""
    pos = 0
    while pos + 8 <= len(head):
        size = int.from_bytes(head[pos : pos + 4], "big")
        kind = head[pos + 4 : pos + 8]
        if kind == b"moov":
            return STREAMING
        if kind in (b"mdat", b"moof"):
            return WHOLE
        if size == 1:
            if pos + 16 > len(head):
                return None
            size = int.from_bytes(head[pos + 8 : pos + 16], "big")
        if size < 8:
            raise UnsupportedAudio("The MP4 file is damaged (bad box size). " + RETRY)
        pos += size
    return None


class FormatSniffer:
    """Finds the container from the first bytes and the MIME hint.

    The bytes decide: browsers and clients mislabel (Chrome's 'audio/mp4' is
    Opus in fragmented MP4, files arrive as application/octet-stream). The hint
    only settles what bytes cannot, and makes error messages specific.
    """

    def __init__(self, mime: str | None) -> None:
        self.mime = mime
        self._head = bytearray()

    def add(self, data: bytes, *, final: bool) -> tuple[str, str] | None:
        """(format, STREAMING or WHOLE) once known; None while more bytes are needed."""
        self._head += data
        if len(self._head) < SNIFF_BYTES and not final:
            return None
        fmt = magic_format(bytes(self._head[:SNIFF_BYTES]))
        hint = mime_format(self.mime)
        if fmt in ("aac", "mp3") and hint in ("aac", "mp3"):
            fmt = hint  # a bare frame sync is ambiguous; elsewhere the bytes win
        if fmt is None:
            raise UnsupportedAudio(self._unknown_message())
        if fmt != "mp4":
            return fmt, STREAMING
        layout = mp4_layout(bytes(self._head))
        if layout is None and (final or len(self._head) > MAX_HEAD_BYTES):
            raise UnsupportedAudio("The MP4 file has no audio index (moov). " + RETRY)
        return None if layout is None else (fmt, layout)

    def take_head(self) -> bytes:
        head, self._head = bytes(self._head), bytearray()
        return head

    def _unknown_message(self) -> str:
        head = bytes(self._head[:SNIFF_BYTES])
        if not head:
            return "No audio was received. Record again."
        if head.startswith(_CLUSTER) or head[4:8] in (b"moof", b"styp"):
            return ("This is a later piece of a recording without its first piece. Send "
                    "every MediaRecorder piece, from the first, in one upload.")
        if len(head) < SNIFF_BYTES:
            return "The upload is too short to be audio. Record again."
        declared = f" (declared as {self.mime[:60]})" if self.mime else ""
        return (f"The upload does not start like audio in a known format{declared}. "
                "If it is a MediaRecorder recording, send every piece from the first one; "
                "otherwise " + RETRY[0].lower() + RETRY[1:])

    @staticmethod
    def foreign_piece(data: bytes, fmt: str, index: int) -> str | None:
        """A message if piece ``index`` starts a new file rather than continuing one."""
        other = magic_format(data[:SNIFF_BYTES])
        # Only whole-file signatures count: a bare 0xFFEx sync, an Ogg page or an
        # ID3 tag may legitimately begin a later piece of the same format.
        if other is None or other == "aac" or (other == fmt and fmt in ("ogg", "mp3")):
            return None
        if other == "mp3" and not data.startswith(b"ID3"):
            return None
        return (f"Piece {index} starts a new {CONTAINER_NAMES[other]} file inside this {CONTAINER_NAMES[fmt]} "
                "upload. Send each recording as its own upload (voice_begin ... voice_end).")
