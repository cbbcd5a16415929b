"""Request bodies, refused as soon as they pass their route's limit: while they stream, not after.

Starlette reads a body whole (``request.body()``) or spools a multipart upload
to a temporary file before a handler can look at its size. This middleware
counts the bytes as they arrive and stops the request the moment it passes
the limit for its path (a declared ``Content-Length`` over it is refused
before anything is read), so a 1 GB upload costs the server the limit, not
a gigabyte of memory or disk.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import TooLarge

DEFAULT_LIMIT = 1 << 20


class BodyLimit:
    def __init__(self, app: ASGIApp, limits: Mapping[str, int], default: int = DEFAULT_LIMIT) -> None:
        """``limits``: bytes allowed per path prefix (the longest matching prefix wins)."""
        self.app = app
        self.limits = sorted(limits.items(), key=lambda item: -len(item[0]))
        self.default = default

    def limit_for(self, path: str) -> int:
        return next((limit for prefix, limit in self.limits if path.startswith(prefix)), self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"")
        too_large = TooLarge(f"the request body is larger than {limit} bytes")
        received = 0

        async def counted() -> Message:
            nonlocal received
            if declared.isdigit() and int(declared) > limit:
                raise too_large  # refused before a byte of it is read
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large
            return message

        await self.app(scope, counted, send)
