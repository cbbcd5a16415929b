"""The stateful streaming codec (server/engines/qwen/codec.py) against upstream's one-shot decode.

Tiny random-weight codecs of the real architecture (the ``qwen_tiny_models``
fixture) and one full-size codec; CPU, float32. Random weights are a fine test
of exactness: any state carried wrong shows up at the seams.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from bench.qwen_codec import full_scale_residuals, random_decoder  # noqa: E402
from server.engines.qwen import compat  # noqa: E402
from server.engines.qwen.codec import CodecBatch, StatefulCodecStream  # noqa: E402
from server.engines.qwen.codec_graphs import GraphedCodecBatch  # noqa: E402
from server.engines.qwen.window_codec import CodecStream  # noqa: E402
from tests import qwen_tiny  # noqa: E402

qwen_tiny_models = qwen_tiny.qwen_tiny_models

FRAME = 1920
GROUPS = 16
TOLERANCE = 1e-4
FRAMES = 100  # past the attention window (72): the key/value window slides, positions pass it
PLANS = {"1": [1], "2": [2], "4": [4], "8": [8], "12": [12], "ramp": [2, 4, 8, 12]}
DEVICE = os.environ.get("MINESTREAM_QWEN_DEVICE", "cpu")
GRAPHS = DEVICE != "cpu"  # on a GPU the padded codec's shapes are captured and replayed
torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Hundreds of small calls: on a shared CPU one thread is several times faster than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tts(qwen_tiny_models: tuple[Path, Path]) -> Any:
    qwen_tts = compat.import_qwen_tts()
    where = {} if DEVICE == "cpu" else {"device_map": DEVICE}
    return qwen_tts.Qwen3TTSModel.from_pretrained(str(qwen_tiny_models[1]), dtype=torch.float32, **where)


@pytest.fixture(scope="module")
def decoder(tts: Any) -> Any:
    return tts.model.speech_tokenizer.model.decoder


@pytest.fixture(scope="module")
def loud_decoder(decoder: Any) -> Any:
    """The tiny codec with its transformer and ConvNeXt branches at full scale, so their state counts."""
    return full_scale_residuals(decoder)


@pytest.fixture(scope="module")
def ref_code(tts: Any) -> torch.Tensor:
    """An in-context clone's reference codes, made by upstream's encoder from 4 s of audio."""
    t = np.arange(4 * 24000) / 24000
    audio = (0.3 * np.sin(2 * np.pi * 180 * t) + 0.05 * np.random.RandomState(0).randn(t.size)).astype(np.float32)
    items = tts.create_voice_clone_prompt(ref_audio=(audio, 24000), ref_text="A reference line.")
    code = items[0].ref_code
    assert code.shape[1] == GROUPS and len(code) >= 40
    return code


def _codes(frames: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 2048, (frames, GROUPS), generator=torch.Generator().manual_seed(seed))


def _sizes(total: int, plan: list[int]) -> Iterator[int]:
    """Chunk sizes from ``plan``, its last size repeated, the last chunk cut to what is left."""
    done, index = 0, 0
    while done < total:
        size = min(plan[min(index, len(plan) - 1)], total - done)
        yield size
        done, index = done + size, index + 1


@torch.inference_mode()
def _one_shot(decoder: Any, history: torch.Tensor | None, codes: torch.Tensor) -> np.ndarray:
    """``decoder`` on the whole sequence, the history's samples cut off."""
    skip = 0 if history is None else len(history)
    full = codes if history is None else torch.cat([history.to(codes.device), codes])
    return decoder(full.T[None].to(decoder.device))[0, 0, skip * FRAME :].cpu().numpy()


def _upstream_decode(tts: Any, history: torch.Tensor | None, codes: torch.Tensor) -> np.ndarray:
    """Upstream's decode path for a clone: ``speech_tokenizer.decode`` of reference + new codes, then its cut."""
    full = codes if history is None else torch.cat([history.to(codes.device), codes])
    wav = tts.model.speech_tokenizer.decode([{"audio_codes": full}])[0][0]
    cut = 0 if history is None else int(len(history) / len(full) * wav.shape[0])
    return wav[cut:]


def _stream(batch: CodecBatch, row: int, codes: torch.Tensor, plan: list[int]) -> np.ndarray:
    chunks, done = [], 0
    for size in _sizes(len(codes), plan):
        audio = batch.decode([row], [codes[done : done + size]])[0]
        assert audio.shape == (size * FRAME,)  # nothing held back: a chunk's audio is final at once
        chunks.append(audio)
        done += size
    return np.concatenate(chunks)


@pytest.mark.parametrize("codec", ["built", "loud"])
@pytest.mark.parametrize("history", [False, True], ids=["design", "clone"])
@pytest.mark.parametrize("plan", list(PLANS), ids=[f"chunks-{p}" for p in PLANS])
def test_stream_equals_one_shot_decode(
    request: pytest.FixtureRequest, tts: Any, ref_code: torch.Tensor, plan: str, history: bool, codec: str
) -> None:
    decoder = request.getfixturevalue("decoder" if codec == "built" else "loud_decoder")
    prefix = ref_code if history else None
    codes = _codes(FRAMES, seed=1)
    batch = CodecBatch(decoder, rows=2)
    streamed = _stream(batch, batch.admit(prefix), codes, PLANS[plan])
    truth = _one_shot(decoder, prefix, codes)
    assert streamed.shape == truth.shape
    assert np.abs(streamed - truth).max() < TOLERANCE
    assert np.abs(truth).max() > 0.05  # the codec speaks: the comparison is not of silence
    if codec == "built":  # upstream's decode path, which under 300 frames is the one-shot decode too
        assert np.abs(streamed - _upstream_decode(tts, prefix, codes)).max() < TOLERANCE


@pytest.mark.parametrize("graphed", [False, True], ids=["plain", "padded"])
def test_streams_decoded_together_join_leave_and_reuse_rows(loud_decoder: Any, ref_code: torch.Tensor, graphed: bool) -> None:
    """Six streams through a three-row batch: one decode call per round, rows freed and reused.

    Padded: each round goes through a captured shape (rows padded to a batch bucket with the scratch row,
    chunks to a frames bucket); on a GPU those are graph replays, on a CPU the same padded calls run eagerly."""
    plans = [[2, 4, 8, 12], [1], [12], [4], [2, 4, 8, 12], [8]]
    streams = [
        {
            "history": ref_code[: 10 + 7 * i] if i % 2 else None,
            "codes": _codes(40 + 23 * i, seed=10 + i),
            "sizes": list(_sizes(40 + 23 * i, plans[i])),
            "audio": [],
            "done": 0,
        }
        for i in range(len(plans))
    ]
    decoder = loud_decoder
    # Graphed: rounds of 1 and 3 rows are padded with the scratch row (to 2 and 4).
    batch = GraphedCodecBatch(decoder, rows=3, graphs=True, batch_buckets=(2, 4)) if graphed else CodecBatch(decoder, rows=3)
    if isinstance(batch, GraphedCodecBatch):
        batch.capture()
        assert batch.graph_count == (8 if GRAPHS else 0)
    waiting, active, rows_used, mixed_rounds, rounds = list(streams), [], [], 0, 0
    for _ in range(400):  # bounded: every round moves each active stream forward
        while waiting and batch.free_rows:
            stream = waiting.pop(0)
            stream["row"] = batch.admit(stream["history"])
            rows_used.append(stream["row"])
            active.append(stream)
        if not active:
            break
        chunks = [s["codes"][s["done"] : s["done"] + s["sizes"][len(s["audio"])]] for s in active]
        mixed_rounds += len({len(c) for c in chunks}) > 1
        rounds += 1
        for stream, audio in zip(active, batch.decode([s["row"] for s in active], chunks), strict=True):
            stream["audio"].append(audio)
            stream["done"] += len(audio) // FRAME
        for stream in [s for s in active if s["done"] == len(s["codes"])]:
            batch.release(stream["row"])
        active = [s for s in active if s["done"] < len(s["codes"])]
        batch.warm(3)  # a warm-up between rounds touches only the scratch row
    assert not waiting and not active
    assert mixed_rounds > 0, "no round padded chunks of different lengths"
    if isinstance(batch, GraphedCodecBatch):
        assert batch.padded_rounds == rounds  # every round went through a captured shape
    assert len(rows_used) > len(set(rows_used)), "no row was reused"
    for stream in streams:
        truth = _one_shot(decoder, stream["history"], stream["codes"])
        assert np.abs(np.concatenate(stream["audio"]) - truth).max() < TOLERANCE


def test_a_shape_that_cannot_be_made_at_start_leaves_the_codec_decoding_eagerly(decoder: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A failed capture (here: a frames bucket whose buffers no machine can hold) is logged, and every
    round then decodes as the plain codec does: the model keeps serving."""
    batch = GraphedCodecBatch(decoder, rows=2, frame_buckets=(2, 1 << 40))
    batch.capture()
    assert not batch.graphs and "codec graph capture failed" in caplog.text
    plain = CodecBatch(decoder, rows=2)
    codes = _codes(6, seed=8)
    got, want = batch.decode([batch.admit()], [codes])[0], plain.decode([plain.admit()], [codes])[0]
    assert batch.padded_rounds == 0 and np.array_equal(got, want)


def test_padding_rows_with_the_scratch_row_changes_nothing(loud_decoder: Any) -> None:
    decoder = loud_decoder
    codes = _codes(30, seed=3), _codes(30, seed=4)
    plain, padded = CodecBatch(decoder, rows=2), CodecBatch(decoder, rows=2)
    rows = [plain.admit(), plain.admit()]
    assert [padded.admit(), padded.admit()] == rows
    scratch = padded.scratch_row
    for start in range(0, 30, 6):
        chunk = torch.stack([c[start : start + 6] for c in codes])
        want = plain.decode_padded(torch.tensor(rows), chunk)
        junk = _codes(6, seed=start)[None]
        got = padded.decode_padded(torch.tensor([rows[0], scratch, rows[1], scratch]), torch.cat([chunk[:1], junk, chunk[1:], junk]))
        assert torch.allclose(got[[0, 2]], want, atol=TOLERANCE, rtol=0)


def test_a_primed_voice_admits_streams_without_decoding_its_reference(loud_decoder: Any, ref_code: torch.Tensor) -> None:
    decoder = loud_decoder
    batch = CodecBatch(decoder, rows=3)
    primed = batch.prime(ref_code)  # once per cloned voice
    rows = [batch.admit(primed), batch.admit(ref_code)]  # one row copies the primed state, one decodes the reference
    codes = [_codes(30, seed=20), _codes(30, seed=21)]
    got: list[list[np.ndarray]] = [[], []]
    for start in range(0, 30, 6):
        for i, audio in enumerate(batch.decode(rows, [c[start : start + 6] for c in codes])):
            got[i].append(audio)
    for i in range(2):
        assert np.abs(np.concatenate(got[i]) - _one_shot(decoder, ref_code, codes[i])).max() < TOLERANCE
    other = CodecBatch(decoder, rows=1)  # a primed state fits any batch over the same decoder
    assert np.abs(_stream(other, other.admit(primed), codes[0], [6]) - np.concatenate(got[0])).max() < TOLERANCE


@pytest.mark.parametrize("history", [False, True], ids=["design", "clone"])
def test_stateful_codec_stream_is_a_drop_in_for_codec_stream(tts: Any, ref_code: torch.Tensor, history: bool) -> None:
    prefix = ref_code if history else None
    frames = list(_codes(90, seed=5))
    new, old = StatefulCodecStream(tts, prefix, 72), CodecStream(tts.model.speech_tokenizer.model.decoder, prefix)
    assert new.pending == old.pending == 0
    assert new.flush().shape == old.flush().shape == (0,)
    got, want, done = [], [], 0
    for size in _sizes(len(frames), [1, 2, 4, 8, 12]):
        for codec in (new, old):
            codec.push(frames[done : done + size])
        assert new.pending == old.pending == size
        got.append(new.flush())
        want.append(old.flush())
        assert got[-1].dtype == np.float32 and got[-1].shape == want[-1].shape == (size * FRAME,)
        done += size
    assert new.pending == 0
    truth = _one_shot(tts.model.speech_tokenizer.model.decoder, prefix, torch.stack(frames))
    assert np.abs(np.concatenate(got) - truth).max() < TOLERANCE
    assert np.abs(np.concatenate(got) - np.concatenate(want)).max() < TOLERANCE


def test_rows_are_bounded_and_checked(decoder: Any) -> None:
    with pytest.raises(ValueError):
        CodecBatch(decoder, rows=0)
    batch = CodecBatch(decoder, rows=2)
    first, second = batch.admit(), batch.admit()
    assert (first, second) == (0, 1) and batch.free_rows == 0
    with pytest.raises(RuntimeError, match="no free codec row"):
        batch.admit()
    batch.release(first)
    with pytest.raises(ValueError):
        batch.release(first)
    with pytest.raises(ValueError):
        batch.release(batch.scratch_row)
    assert batch.admit() == first
    with pytest.raises(ValueError, match="one chunk per row"):
        batch.decode([first, second], [_codes(2, seed=0)])
    assert batch.decode([], []) == []
    assert [a.shape for a in batch.decode([first], [_codes(0, seed=0)])] == [(0,)]
    batch.release(second)
    with pytest.raises(ValueError, match="not free"):
        batch.admit(row=first)
    assert batch.admit(row=second) == second  # a caller can mirror its decode batch's rows


def test_full_size_codec_stream_equals_one_shot_decode() -> None:
    """The released checkpoints' codec dimensions (8 layers, 1536-wide vocoder), random weights.

    Short of the attention window: the window sliding is the same code at every size, and the tiny
    codec's tests cross it; here the eight layers' caches and the full-size convolutions' carried
    tails are what is checked (half the frames, half the CPU of the suite's most expensive test).
    """
    decoder = random_decoder("1.7b")
    history, codes = _codes(8, seed=6), _codes(40, seed=7)
    batch = CodecBatch(decoder, rows=1)
    streamed = _stream(batch, batch.admit(history), codes, [1, 2, 4, 8, 12])
    truth = _one_shot(decoder, history, codes)
    assert np.abs(truth).max() > 0.01
    assert np.abs(streamed - truth).max() < TOLERANCE
