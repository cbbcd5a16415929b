"""Engine-direct: the same load, with no network, to separate engine time from transport time.

Each stream drives ``server.speech.speak`` (sentence splitting, scheduling
deadlines, the engine) in this process, exactly as a session does, and takes
the chunks as they come out. The difference to a wss run at the same level
is the transport: TLS, WebSocket framing, the session's outbox and the client.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.audio import SAMPLE_RATE
from server.config import Settings
from server.engines import create_engine
from server.engines.base import Engine, Reference, Voice
from server.errors import MineStreamError
from server.reference import prepare_reference
from server.speech import Utterance, speak_audio

from .transport import ChunkCallback, Outcome, Stream, VoiceSpec

_ids = itertools.count()


class DirectStream:
    def __init__(self, engine: Engine, references: dict[str, Reference]) -> None:
        self.engine = engine
        self.references = references

    def _voice(self, spec: VoiceSpec) -> Voice:
        if spec.mode == "clone":
            assert spec.voice_id is not None
            return Voice(reference=self.references[spec.voice_id], voice_id=spec.voice_id)
        return Voice(design=spec.design)

    async def utter(self, text: str, voice: VoiceSpec, on_chunk: ChunkCallback) -> Outcome:
        sent = time.perf_counter()
        utterance = Utterance(f"d{next(_ids)}", self._voice(voice))
        utterance.add_text(text)
        utterance.end()
        outcome = Outcome(sent)
        try:
            async for chunk in speak_audio(self.engine, utterance):
                on_chunk(time.perf_counter(), chunk)
        except MineStreamError as exc:
            outcome.error = exc.code
        outcome.done = {
            "id": utterance.id,
            "cancelled": outcome.error is not None,
            "audio_ms": utterance.audio_ms,
            "ttfa_ms": utterance.ttfa_ms,
            "rtf": utterance.rtf,
        }
        return outcome

    async def close(self) -> None:
        pass


@dataclass
class EngineDirectTransport:
    engine_name: str = "preview"
    name: str = "engine"
    sample_rate: int = SAMPLE_RATE
    engine: Engine | None = None
    references: dict[str, Reference] = field(default_factory=dict)

    async def start(self) -> dict[str, Any]:
        self.engine = create_engine(Settings(engine=self.engine_name))
        await self.engine.start()
        return {"engine": {**self.engine.info.as_message(), **self.engine.health()}}

    async def clone_voice(self, design: str, text: str) -> str:
        assert self.engine is not None
        utterance = Utterance("clone-source", Voice(design=design))
        utterance.add_text(text)
        utterance.end()
        pieces = [chunk async for chunk in speak_audio(self.engine, utterance)]
        audio = prepare_reference(np.concatenate(pieces))
        key = f"bench-{len(self.references)}"
        self.references[key] = Reference(audio, text=text, key=key)
        return key

    async def open(self) -> Stream:
        assert self.engine is not None
        return DirectStream(self.engine, self.references)

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.close()
            self.engine = None

    def metrics_url(self) -> str | None:
        return None
