"""The Python client of MineStream's protocol v1 (and its CLI, ``python -m client``).

    from client import Client

    async with Client.connect("wss://localhost:8443/v1/stream", ca="certs/ca.pem", token=TOKEN) as client:
        print(client.ready.engine.name)
        speech = await client.speak("Hello there.", design="a warm narrator")
        async for chunk in speech:        # AudioChunk: seq, data (PCM), received
            play(chunk.data)
        print(speech.done.ttfa_ms)        # Done: cancelled, audio_ms, ttfa_ms, rtf
        me = await client.clone("me.wav", ref_text="what I said")   # Voice
        await client.voices.rename(me.id, "Me")                     # the HTTP voice library

``client.sync.SyncClient`` is the same, blocking. Every wait has a limit
(``Timeouts``); failures raise one hierarchy rooted at ``MineStreamError``
(``client.errors``). The modules: ``connection`` (the session and its message
router), ``handshake`` (opening the socket), ``speech`` (one utterance),
``upload`` (a recording sent in pieces), ``library`` (``/v1/voices``),
``messages`` (the typed results), ``errors``, ``timeouts``, ``tls``, ``wire``
(msgpack/JSON frames), ``wav``, ``sync``, ``cli``.
"""

from __future__ import annotations

from .connection import Client, Connecting
from .errors import (
    BadRequest,
    CertificateError,
    ConnectError,
    Disconnected,
    LimitExceeded,
    MineStreamError,
    ServerError,
    Timeout,
    TLSError,
    Unauthorized,
    Unavailable,
    UnsupportedAudio,
    VoiceNotFound,
)
from .library import VoiceLibrary
from .messages import AudioChunk, Done, EngineInfo, Flushed, Limits, Pong, Progress, Ready, Segment, Voice
from .speech import Speech, SpeechEvent
from .timeouts import Timeouts
from .tls import ssl_context
from .upload import Upload

__all__ = [
    "AudioChunk",
    "BadRequest",
    "CertificateError",
    "Client",
    "ConnectError",
    "Connecting",
    "Disconnected",
    "Done",
    "EngineInfo",
    "Flushed",
    "LimitExceeded",
    "Limits",
    "MineStreamError",
    "Pong",
    "Progress",
    "Ready",
    "Segment",
    "ServerError",
    "Speech",
    "SpeechEvent",
    "TLSError",
    "Timeout",
    "Timeouts",
    "Unauthorized",
    "Unavailable",
    "UnsupportedAudio",
    "Upload",
    "Voice",
    "VoiceLibrary",
    "VoiceNotFound",
    "ssl_context",
]
