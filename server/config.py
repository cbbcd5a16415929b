"""Server settings: where things live, which engine, and the limits."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Limits:
    """Reported to clients in ``ready``; every one is enforced by the session."""

    max_text_chars: int = 5000
    max_ref_seconds: float = 30.0
    max_open_utterances: int = 8
    max_message_bytes: int = 1 << 20
    max_sessions: int = 256
    max_uploads: int = 2

    def as_message(self) -> dict[str, Any]:
        return {
            "max_text_chars": self.max_text_chars,
            "max_ref_seconds": self.max_ref_seconds,
            "max_open_utterances": self.max_open_utterances,
            "max_message_bytes": self.max_message_bytes,
        }


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 8443
    data_dir: Path = Path("data")
    certs_dir: Path = Path("certs")
    cert: Path | None = None
    key: Path | None = None
    engine: str = "auto"
    design_model: str = "Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign"
    base_model: str = "Qwen/Qwen3-TTS-12Hz-1.7B-Base"
    qwen_decode: str = "auto"
    """Qwen decode step: CUDA graphs ("graphs"), op by op ("eager"), or by device ("auto": graphs on a GPU)."""
    preview_workers: int | None = None
    preview_threads: int = 2
    """Threads per Piper instance: 2 halves a lone sentence's latency on 2 cores; 1 is leaner under heavy load."""
    token: str | None = None
    """An explicit token; when None one is generated where one is required."""
    require_token: bool | None = None
    """None: required unless bound to loopback."""
    allowed_origins: tuple[str, ...] = ()
    ice_hosts: tuple[str, ...] = ()
    ice_servers: tuple[str, ...] = ()
    rtc_connect_timeout_s: float = 15.0
    """A WebRTC peer that has not connected by then is closed and freed."""
    limits: Limits = field(default_factory=Limits)

    @property
    def token_required(self) -> bool:
        if self.require_token is not None:
            return self.require_token
        return self.token is not None or not is_loopback(self.host)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
