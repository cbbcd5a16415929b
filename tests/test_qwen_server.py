"""The Qwen engine behind the real server: sixteen sessions speaking at once over wss."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("transformers")

from tests import qwen_tiny  # noqa: E402

qwen_tiny_models = qwen_tiny.qwen_tiny_models  # the session fixture (conftest may import it too)
TINY_MAX_NEW_TOKENS = qwen_tiny.TINY_MAX_NEW_TOKENS

FRAME = 1920
SEGMENT = (TINY_MAX_NEW_TOKENS - 1) * FRAME  # the tiny models run every segment to the cap
SESSIONS = 16
# Four different utterances, each spoken by four sessions: every copy must match a solo run.
UTTERANCES = [
    ("Hello there. How are you today?", "a calm voice"),
    ("Good morning. It is sunny.", "a bright voice"),
    ("One more thing. Then we stop.", "an old man"),
    ("The birch canoe slid. It was smooth.", "a child"),
]


@pytest.fixture
def qwen_server(server_factory: Callable, qwen_tiny_models: tuple[Path, Path]):
    design, base = qwen_tiny_models
    return server_factory("--design-model", str(design), "--base-model", str(base), engine="qwen")


async def _speak(live: Any, text: str, design: str) -> tuple[np.ndarray, list[int], dict]:
    async with await live.client(format="pcm_f32le") as client:
        speech = await client.say(text, design=design)
        assert not speech.errors, speech.errors
        return speech.pcm(), [chunk.seq for chunk in speech.chunks], client.ready


def test_sixteen_sessions_speak_at_once(qwen_server) -> None:
    jobs = [UTTERANCES[i % len(UTTERANCES)] for i in range(SESSIONS)]

    async def main() -> tuple[list, list]:
        together = await asyncio.gather(*(_speak(qwen_server, t, d) for t, d in jobs))
        alone = [await _speak(qwen_server, t, d) for t, d in UTTERANCES]
        return list(together), alone

    together, alone = asyncio.run(main())
    for i, (pcm, seqs, ready) in enumerate(together):
        solo = alone[i % len(UTTERANCES)][0]
        assert pcm.shape == (2 * SEGMENT,)  # two sentences: VoiceDesign, then Base cloning it
        assert seqs == list(range(len(seqs)))  # every chunk, in order: no gap in the stream
        assert np.abs(pcm).max() > 0
        np.testing.assert_allclose(pcm, solo, atol=1e-4)
        assert set(ready["engine"]["rows"]) == {"design", "base"}
    assert not np.allclose(alone[0][0], alone[1][0])
    with qwen_server.http() as http:
        health = http.get("/healthz").json()
    rows = _find(health, "rows")
    assert set(rows) == {"design", "base"}
    assert all(r["rows_in_use"] == 0 and r["rows_total"] >= SESSIONS and r["steps"] > 0 for r in rows.values())


def _find(tree: Any, key: str) -> Any:
    """The first value under ``key`` anywhere in a JSON tree."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        tree = list(tree.values())
    for item in tree if isinstance(tree, list) else []:
        if (found := _find(item, key)) is not None:
            return found
    return None
