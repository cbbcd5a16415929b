"""Reading Ogg pages back, for the tests of ``format: "opus"`` on the socket."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from server.ogg import crc32

BEGIN, END = 0x02, 0x04


@dataclass
class Page:
    flags: int
    granule: int
    serial: int
    sequence: int
    size: int
    body: bytes


def page_at(data: bytes, offset: int) -> Page:
    magic, version, flags, granule, serial, sequence, crc, count = struct.unpack_from("<4sBBqIIIB", data, offset)
    assert magic == b"OggS" and version == 0, f"no Ogg page at {offset}"
    lacing = data[offset + 27 : offset + 27 + count]
    size = 27 + count + sum(lacing)
    page = bytearray(data[offset : offset + size])
    assert len(page) == size, "a page is cut short"
    page[22:26] = b"\0\0\0\0"
    assert crc32(bytes(page)) == crc, "bad page CRC"
    return Page(flags, granule, serial, sequence, size, bytes(page[27 + count :]))


def pages(message: bytes) -> list[Page]:
    """The pages of one ``audio`` message, which must hold whole pages and nothing else."""
    out, offset = [], 0
    while offset < len(message):
        page = page_at(message, offset)
        out.append(page)
        offset += page.size
    assert offset == len(message)
    return out


def assert_one_stream(messages: list[bytes]) -> list[Page]:
    """The messages of one utterance: one complete Ogg/Opus stream, headers first, end-of-stream last."""
    stream = [page for message in messages for page in pages(message)]
    assert stream[0].flags == BEGIN and stream[0].body.startswith(b"OpusHead")
    assert stream[1].body.startswith(b"OpusTags")
    assert pages(messages[0])[0].body.startswith(b"OpusHead"), "the first message carries the headers"
    assert [p.sequence for p in stream] == list(range(len(stream)))
    assert len({p.serial for p in stream}) == 1
    assert stream[-1].flags & END and not any(p.flags & END for p in stream[:-1])
    return stream
