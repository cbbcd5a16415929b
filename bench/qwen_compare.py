"""Side-by-side runners for ``bench.qwen_engine``: upstream one-shot and faster-qwen3-tts.

Each runner returns rows of the same shape as the engine's: TTFA (request to
first audio), per-step time, RTF (wall / audio) for 1..N concurrent requests.

* upstream ``qwen-tts`` does not stream: N requests are one batched
  ``generate_voice_*`` call, and TTFA is the whole call.
* faster-qwen3-tts streams one request at a time (one static cache, one set of
  CUDA graphs per model), so N requests run back to back from a common start:
  TTFA and wall include the wait for the requests ahead.

``suppress_eos`` fixes the length for our engine and upstream: the talker
config's EOS id becomes one the head cannot produce, so upstream's own
``suppress_tokens`` (the top 1024 ids except EOS) now bans the real EOS, and
no sampled token ends a stream. faster-qwen3-tts gets ``min_new_tokens``
instead, and the random-weight builds make EOS unreachable anyway
(``bench.qwen_models``).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from server.engines.base import SAMPLE_RATE

TEXT = "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background."
INSTRUCT = "a calm, warm narrator"
SAMPLES_PER_FRAME = 1920
SECTION = "## Qwen engine (GPU, random-weight full-size models)"


def reference_audio() -> np.ndarray:
    return np.random.RandomState(0).randn(3 * SAMPLE_RATE).astype(np.float32) * 0.1


def suppress_eos(tts: Any) -> None:
    """Make the loaded ``Qwen3TTSModel`` never end a stream on its own (see module doc)."""
    talker = tts.model.config.talker_config
    talker.codec_eos_token_id = talker.vocab_size


def load_upstream(path: str, device: str, dtype: Any) -> Any:
    """Load the way ``ModelManager`` does, so both run the same weights and kernels."""
    from server.engines.qwen.compat import import_qwen_tts

    kwargs: dict[str, Any] = {"dtype": dtype}
    if device != "cpu":
        kwargs["device_map"] = device
        if importlib.util.find_spec("flash_attn") is not None:
            kwargs["attn_implementation"] = "flash_attention_2"
    tts = import_qwen_tts().Qwen3TTSModel.from_pretrained(path, **kwargs)
    tts.model.eval()
    return tts


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _row(runner: str, voice: str, n: int, ttfa: list[float], walls: list[float], audio: list[float], steps: float) -> dict[str, Any]:
    frames = round(statistics.median(audio) * SAMPLE_RATE / SAMPLES_PER_FRAME)
    row = {
        "runner": runner,
        "voice": voice,
        "streams": n,
        "ttfa_ms_p50": 1000 * statistics.median(ttfa),
        "ttfa_ms_max": 1000 * max(ttfa),
        "step_ms": 1000 * steps,
        "step_ms_per_stream": 1000 * steps / n,
        "rtf": statistics.median(w / max(a, 1e-9) for w, a in zip(walls, audio, strict=True)),
        "audio_s": statistics.median(audio),
        "frames": frames,
    }
    print("row", json.dumps(row), flush=True)  # a run cut off by its time limit still shows what it measured
    return row


# -- upstream one-shot -------------------------------------------------------


def _upstream_call(tts: Any, voice: str, n: int, frames: int | None) -> tuple[list[np.ndarray], int]:
    extra: dict[str, Any] = {"max_new_tokens": frames + 1} if frames else {}  # +1: the last token is never decoded
    if voice == "design":
        return tts.generate_voice_design(text=[TEXT] * n, instruct=[INSTRUCT] * n, language=["english"] * n, **extra)
    items = tts.create_voice_clone_prompt(ref_audio=(reference_audio(), SAMPLE_RATE), x_vector_only_mode=True)
    return tts.generate_voice_clone(text=[TEXT] * n, language=["english"] * n, voice_clone_prompt=items * n, **extra)


def run_upstream(
    dirs: dict[str, str], voices: Iterable[str], streams: Iterable[int], *, frames: int | None, device: str, dtype: Any, eos: bool
) -> list[dict[str, Any]]:
    rows = []
    for voice in voices:
        tts = load_upstream(dirs[voice], device, dtype)
        if not eos:
            suppress_eos(tts)
        _upstream_call(tts, voice, 1, frames)  # warm-up: kernels, allocator
        for n in streams:
            _sync()
            started = time.perf_counter()
            wavs, sr = _upstream_call(tts, voice, n, frames)
            _sync()
            wall = time.perf_counter() - started
            audio = [len(w) / sr for w in wavs]
            steps = wall / max(1, round(max(audio) * sr / SAMPLES_PER_FRAME))
            rows.append(_row("upstream one-shot", voice, n, [wall] * n, [wall] * n, audio, steps))
        del tts
        _free()
    return rows


def _free() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- faster-qwen3-tts --------------------------------------------------------


def faster_unavailable(device: str) -> str | None:
    """Why faster-qwen3-tts cannot run here, or None."""
    import torch

    if importlib.util.find_spec("faster_qwen3_tts") is None:
        return "faster-qwen3-tts is not installed"
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return "faster-qwen3-tts needs CUDA (CUDA graphs)"
    return None


def _accepted(fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The kwargs ``fn`` takes: its signature has moved between releases."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def _faster_stream(model: Any, voice: str, frames: int | None, sampling: dict[str, Any], ref_wav: str, chunk: int) -> Callable[[], Any]:
    common: dict[str, Any] = {"text": TEXT, "language": "english", "chunk_size": chunk, **sampling}
    if frames:
        common.update(max_new_tokens=frames, min_new_tokens=frames)
    if voice == "design":
        fn = getattr(model, "generate_voice_design_streaming", None)
        if fn is None:
            raise RuntimeError("this faster-qwen3-tts has no generate_voice_design_streaming")
        kwargs = {**common, "instruct": INSTRUCT}
    else:
        fn = model.generate_voice_clone_streaming
        kwargs = {**common, "ref_audio": ref_wav, "ref_text": "", "xvec_only": True}
    kwargs = _accepted(fn, kwargs)
    return lambda: fn(**kwargs)


def _faster_one(stream: Callable[[], Any], started: float) -> tuple[float, float, float]:
    first: float | None = None
    seconds = 0.0
    for chunk, sr, *_ in stream():  # (audio, sample rate, timing)
        first = first if first is not None else time.perf_counter() - started
        seconds += np.asarray(chunk).size / sr
    wall = time.perf_counter() - started
    return first or wall, wall, seconds


def run_faster(
    dirs: dict[str, str],
    voices: Iterable[str],
    streams: Iterable[int],
    *,
    frames: int | None,
    device: str,
    dtype: Any,
    chunks: Iterable[int] = (4,),
) -> tuple[list[dict[str, Any]], str | None]:
    """Rows, or no rows and why faster-qwen3-tts was skipped; one set per chunk size (frames per chunk)."""
    if (why := faster_unavailable(device)) is not None:
        return [], why
    import soundfile as sf

    from server.engines.qwen.compat import install

    install()  # it imports qwen_tts, whose 25 Hz tokenizer wants sox
    try:
        from faster_qwen3_tts import FasterQwen3TTS
    except Exception as exc:  # built for another qwen-tts / transformers
        return [], f"faster-qwen3-tts does not import: {type(exc).__name__}: {exc}"
    ref_wav = str(Path(tempfile.mkdtemp(prefix="qwen-ref-")) / "ref.wav")
    sf.write(ref_wav, reference_audio(), SAMPLE_RATE)
    rows: list[dict[str, Any]] = []
    for voice in voices:
        sampling = _sampling(dirs[voice])
        load = _accepted(FasterQwen3TTS.from_pretrained, {"device": device, "dtype": dtype})
        try:
            model = FasterQwen3TTS.from_pretrained(dirs[voice], **load)
            _faster_one(_faster_stream(model, voice, frames, sampling, ref_wav, 4), time.perf_counter())  # captures graphs
        except Exception as exc:  # a release whose API moved again: say so, keep the other rows
            return rows, f"faster-qwen3-tts failed on {voice}: {type(exc).__name__}: {exc}"
        for chunk in chunks:
            stream = _faster_stream(model, voice, frames, sampling, ref_wav, chunk)
            for n in streams:
                started = time.perf_counter()
                runs = [_faster_one(stream, started) for _ in range(n)]
                audio = [a for _, _, a in runs]
                solo = runs[0][1] / max(1.0, audio[0] * SAMPLE_RATE / SAMPLES_PER_FRAME)
                walls = [w for _, w, _ in runs]
                label = f"faster-qwen3-tts (chunk {chunk})"
                rows.append(_row(label, voice, n, [t for t, _, _ in runs], walls, audio, solo * n))
        del model
        _free()
    return rows, None


def _sampling(path: str) -> dict[str, Any]:
    """The dir's generation_config.json, in faster-qwen3-tts' argument names."""
    config = json.loads((Path(path) / "generation_config.json").read_text())
    keys = ("do_sample", "top_k", "top_p", "temperature", "repetition_penalty")
    return {k: config[k] for k in keys if k in config}


# -- reporting ---------------------------------------------------------------


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| runner | voice | streams | TTFA p50 ms | TTFA max ms | step ms | step ms / stream | RTF p50 | x real time | frames |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['runner']} | {r['voice']} | {r['streams']} | {r['ttfa_ms_p50']:.0f} | {r['ttfa_ms_max']:.0f} "
            f"| {r['step_ms']:.1f} | {r['step_ms_per_stream']:.2f} | {r['rtf']:.3f} | {1 / max(r['rtf'], 1e-9):.2f} | {r['frames']} |"
        )
    return "\n".join(lines)


def phase_table(rows: list[dict[str, Any]], phases: tuple[str, ...]) -> str:
    """Where the engine's time to first audio goes (medians, ms), for the rows that timed it."""
    timed = [r for r in rows if r.get("phases_ms")]
    if not timed:
        return ""
    lines = [
        "TTFA by phase (median ms): queue = waiting for the model thread, prompt = upstream's prompt "
        "building, prefill, frames = generating the first chunk, decode = its codec decode.",
        "",
        "| runner | voice | streams | queue | prompt | prefill | frames | decode |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in timed:
        cells = " | ".join(f"{r['phases_ms'].get(p, 0):.1f}" for p in phases)
        lines.append(f"| {r['runner']} | {r['voice']} | {r['streams']} | {cells} |")
    return "\n".join(lines)


def block(key: str, heading: str, body: str) -> str:
    return f"<!-- qwen-gpu:{key} -->\n{heading}\n\n{body}\n<!-- /qwen-gpu:{key} -->"


def update_results(path: Path, key: str, text: str) -> None:
    """Put ``text`` (a ``block``) into the GPU section of ``path``, replacing that key's block.

    Only that section changes; it is appended when missing.
    """
    doc = path.read_text() if path.exists() else ""
    if SECTION not in doc:
        doc = doc.rstrip("\n") + ("\n\n" if doc else "") + SECTION + "\n"
    start = doc.index(SECTION)
    nxt = doc.find("\n## ", start + len(SECTION))
    end = len(doc) if nxt < 0 else nxt + 1
    section = doc[start:end]
    pattern = re.compile(rf"<!-- qwen-gpu:{re.escape(key)} -->.*?<!-- /qwen-gpu:{re.escape(key)} -->", re.S)
    if pattern.search(section):
        section = pattern.sub(lambda _: text, section)
    else:
        section = section.rstrip("\n") + "\n\n" + text + "\n"
    if nxt >= 0:
        section = section.rstrip("\n") + "\n\n"
    path.write_text(doc[:start] + section + doc[end:])


def merge_blocks(source: Path, target: Path) -> list[str]:
    """Copy every ``block`` found in ``source`` (a file a GPU run wrote) into ``target``."""
    found = re.findall(r"(<!-- qwen-gpu:(\S+) -->.*?<!-- /qwen-gpu:\2 -->)", source.read_text(), re.S)
    for text, key in found:
        update_results(target, key, text)
    return [key for _, key in found]
