"""The Qwen engine behind the real server: two sessions streaming at once."""

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


@pytest.fixture(params=["plain", "static"])
def qwen_server(request: pytest.FixtureRequest, server_factory: Callable, qwen_tiny_models: tuple[Path, Path]):
    design, base = qwen_tiny_models
    args = ("--design-model", str(design), "--base-model", str(base), "--qwen-decode", request.param)
    return server_factory(*args, engine="qwen")


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


async def _speak(live, text: str, design: str) -> np.ndarray:
    async with await live.client(format="pcm_f32le") as client:
        assert client.ready["engine"]["kind"] == "qwen" if "engine" in client.ready else True
        speech = await client.say(text, design=design)
        assert not speech.errors, speech.errors
        return speech.pcm()


def test_two_sessions_stream_at_once(qwen_server) -> None:
    jobs = [("Hello there. How are you today?", "a calm voice"), ("Good morning. It is sunny.", "a bright voice")]

    async def main() -> tuple[list[np.ndarray], list[np.ndarray]]:
        together = await asyncio.gather(*(_speak(qwen_server, t, d) for t, d in jobs))
        alone = [await _speak(qwen_server, t, d) for t, d in jobs]
        return list(together), alone

    together, alone = asyncio.run(main())
    for mixed, solo in zip(together, alone, strict=True):
        assert mixed.shape == (2 * SEGMENT,)  # two sentences: VoiceDesign, then Base cloning it
        assert np.abs(mixed).max() > 0
        np.testing.assert_allclose(mixed, solo, atol=1e-4)
    assert not np.allclose(together[0], together[1])
    with qwen_server.http() as http:
        health = http.get("/healthz").json()
    text = str(health)
    assert "design" in text and "base" in text
    decode = _find(health, "decode")
    assert decode in ("plain", "static")
    if decode == "static":  # both models ran on static slots, and every slot was handed back
        slots = _find(health, "static_slots")
        assert set(slots) == {"design", "base"} and all(s["in_use"] == 0 for s in slots.values())
