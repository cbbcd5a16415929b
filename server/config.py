"""Server settings: where things live, which engine, and the limits."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .protocol import QueueLimits


@dataclass(frozen=True)
class Limits:
    """What one client may ask for and hold. Those a client should know are in ``ready``."""

    max_text_chars: int = 5000
    max_ref_seconds: float = 30.0
    max_open_utterances: int = 8
    max_message_bytes: int = 1 << 20
    max_sessions: int = 256
    """Sessions that said hello (and gave the token); others wait in the pending budget."""
    max_pending: int = 64
    """Connections that have not said hello yet: a separate, small budget, so idle sockets lock nobody out."""
    max_uploads: int = 2
    max_audio_s_per_char: float = 1.0
    """Audio one character may become (numbers and symbols expand; runaway engines do not stop)."""
    max_utterance_audio_s: float = 900.0
    hello_timeout_s: float = 5.0
    idle_timeout_s: float = 300.0
    """A session with nothing open that sends nothing for this long is closed."""
    send_timeout_s: float = 20.0
    """A client that takes longer than this to accept one frame is not reading: it is closed."""
    request_timeout_s: float = 10.0
    """A TLS connection that sends no HTTP request for this long is closed."""
    queue: QueueLimits = field(default_factory=QueueLimits)

    def as_message(self) -> dict[str, Any]:
        return {
            "max_text_chars": self.max_text_chars,
            "max_ref_seconds": self.max_ref_seconds,
            "max_open_utterances": self.max_open_utterances,
            "max_message_bytes": self.max_message_bytes,
            "max_uploads": self.max_uploads,
            "max_utterance_audio_s": self.max_utterance_audio_s,
            "idle_timeout_s": self.idle_timeout_s,
            "max_queued_bytes": self.queue.max_bytes,
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
    qwen_predictor: str = "folded"
    """Qwen code predictor: folded weights ("folded"), the same under torch.compile ("compiled"), or upstream's
    modules one by one ("eager", the reference)."""
    qwen_talker: str = "modules"
    """Qwen talker step: upstream's modules over the batch's KV pool ("modules"), or the same under torch.compile ("compiled")."""
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
    drain_timeout_s: float = 30.0
    """On SIGTERM, how long utterances in flight may take to finish."""
    tls: bool = True
    behind_proxy: bool = False
    """A TLS-terminating proxy is in front: plain HTTP is allowed off loopback, X-Forwarded-* is trusted."""
    database_url: str | None = None
    """The voice library's database (SQLAlchemy async URL); None: SQLite in the data dir."""
    engine_url: str | None = None
    """``--engine openai``: the OpenAI-compatible server whose ``POST /v1/audio/speech`` speaks."""
    engine_key: str | None = None
    """``--engine openai``: the bearer token (API key) that server wants, if any."""
    engine_ca: Path | None = None
    """``--engine openai``: a CA file to trust for that server's certificate."""
    engine_model: str | None = None
    engine_voice: str = "alloy"
    """``--engine openai``: the ``voice`` field sent with designs (a remote's required stock voice)."""
    ray_address: str | None = None
    """``--engine ray``: the Ray cluster ("auto", "HOST:PORT" of its GCS, or ``ray://HOST:10001``)."""
    ray_app: str = "minestream"
    """``--engine ray``: the Serve application that ``python -m server.cluster`` deployed."""
    limits: Limits = field(default_factory=Limits)

    @property
    def cache_dir(self) -> Path:
        """Where engines keep what they derive from references (voice-clone prompts)."""
        return self.data_dir / "cache"

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
