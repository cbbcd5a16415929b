"""Ogg pages (RFC 3533), written by hand so that each chunk of audio is flushed as its own pages.

FFmpeg's Ogg muxer closes a page once it holds ``page_duration`` of audio (a
second by default) and PyAV cannot ask it to flush early; a page per packet
would cost 28 bytes per 20 ms packet, a third of an Opus stream at 32 kb/s.
Here the caller decides: every ``page`` call ends its pages, so one chunk of
speech is one or two pages that a player can use as they arrive.
"""

from __future__ import annotations

import struct

_BEGIN, _END = 0x02, 0x04
_MAX_LACING = 255


def _crc_table() -> tuple[int, ...]:
    table = []
    for index in range(256):
        crc = index << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return tuple(table)


_CRC = _crc_table()


def crc32(data: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, not reflected, no final xor: not zlib's)."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC[(crc >> 24) ^ byte]
    return crc


def _lacing(packet: bytes) -> bytes:
    """A packet's segment sizes: 255s, then the remainder (0 where it is a multiple of 255)."""
    return b"\xff" * (len(packet) // 255) + bytes([len(packet) % 255])


class OggStream:
    """One logical Ogg stream: numbers its pages and marks its first and last."""

    def __init__(self, serial: int) -> None:
        self.serial = serial & 0xFFFFFFFF
        self._sequence = 0
        self._granule = 0
        self.ended = False

    def pages(self, packets: list[tuple[bytes, int]], *, first: bool = False, last: bool = False) -> bytes:
        """``packets`` (data, granule position at its end) as complete pages, ending the last page here.

        Packets are never split across pages (Opus packets are at most 1275
        bytes), so a page's granule position is its last packet's. With
        ``last``, the final page carries the end-of-stream mark, even if empty.
        """
        if self.ended:
            raise RuntimeError("the Ogg stream has ended")
        out = bytearray()
        group: list[tuple[bytes, int]] = []
        lacing = 0
        for packet in packets:
            size = len(packet[0]) // 255 + 1
            if group and lacing + size > _MAX_LACING:
                out += self._page(group, first=first and not out)
                group, lacing = [], 0
            group.append(packet)
            lacing += size
        if group or last:
            out += self._page(group, first=first and not out, last=last)
        self.ended = last
        return bytes(out)

    def _page(self, packets: list[tuple[bytes, int]], *, first: bool = False, last: bool = False) -> bytes:
        granule = packets[-1][1] if packets else self._granule
        self._granule = granule
        lacing = b"".join(_lacing(data) for data, _ in packets)
        flags = (_BEGIN if first else 0) | (_END if last else 0)
        header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, granule, self.serial, self._sequence, 0, len(lacing)) + lacing
        page = bytearray(header + b"".join(data for data, _ in packets))
        struct.pack_into("<I", page, 22, crc32(bytes(page)))
        self._sequence += 1
        return bytes(page)
