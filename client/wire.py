"""Protocol v1 on the wire: a msgpack map per binary frame, or a JSON object per text frame.

In JSON, byte fields travel as base64 strings; ``decode`` turns ``audio.data``
back into bytes so the rest of the client sees one shape either way.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import msgpack

BYTE_FIELDS_IN = ("data",)
"""Fields of server messages that are bytes (base64 in JSON)."""


def encode(message: dict[str, Any], *, binary: bool) -> bytes | str:
    if binary:
        return bytes(msgpack.packb(message, use_bin_type=True))
    return json.dumps({k: base64.b64encode(v).decode() if isinstance(v, bytes) else v for k, v in message.items()})


def decode(frame: bytes | str) -> dict[str, Any] | None:
    """The message in a frame; None for a frame that is not a map (ignored, like an unknown type)."""
    try:
        message = msgpack.unpackb(frame, raw=False) if isinstance(frame, bytes) else json.loads(frame)
        if not isinstance(message, dict):
            return None
        for key in BYTE_FIELDS_IN:
            if isinstance(message.get(key), str):
                message[key] = base64.b64decode(message[key])
    except (ValueError, msgpack.UnpackException):
        return None
    return message
