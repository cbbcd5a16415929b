"""The Qwen benchmarks on the tiny models: ``--suppress-eos`` fixes every stream at N frames; the load mode's figures."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from bench import qwen_compare as compare  # noqa: E402
from bench import qwen_engine, qwen_load  # noqa: E402
from server.engines.qwen.manager import ModelManager  # noqa: E402
from tests import qwen_tiny  # noqa: E402

qwen_tiny_models = qwen_tiny.qwen_tiny_models  # the session fixture (conftest may import it too)
EOS = 2150
FRAMES = 5


def _force_eos(tts: Any) -> Any:
    """Make EOS the talker's favourite token, so only suppression keeps a stream going."""

    def hook(module: Any, inputs: Any, logits: Any) -> Any:
        logits = logits.clone()
        logits[..., EOS] += 1e4
        return logits

    tts.model.talker.codec_head.register_forward_hook(hook)
    return tts


def _frames(wavs: list[Any], sr: int) -> list[int]:
    return [round(len(w) / sr * 12.5) for w in wavs]


def test_suppress_eos_fixes_upstream_length(qwen_tiny_models: tuple[Path, Path]) -> None:
    tts = _force_eos(compare.load_upstream(str(qwen_tiny_models[0]), "cpu", torch.float32))
    short, sr = compare._upstream_call(tts, "design", 2, FRAMES)
    compare.suppress_eos(tts)
    fixed, sr = compare._upstream_call(tts, "design", 2, FRAMES)
    assert max(_frames(short, sr)) < FRAMES  # EOS right after upstream's min_new_tokens
    assert _frames(fixed, sr) == [FRAMES, FRAMES]


def test_suppress_eos_fixes_engine_length(qwen_tiny_models: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    load = ModelManager._load
    monkeypatch.setattr(ModelManager, "_load", lambda self, source: _force_eos(load(self, source)))
    design, base = map(str, qwen_tiny_models)

    def rows(suppress: bool) -> list[dict[str, Any]]:
        args = argparse.Namespace(
            design_model=design, base_model=base, device="cpu", dtype=None, frames=FRAMES,
            suppress_eos=suppress, voices=["design", "clone"], streams=[1, 2], decode="eager", first_chunk=[2],
        )  # fmt: skip
        return asyncio.run(qwen_engine.run(args))

    assert all(r["frames"] < FRAMES for r in rows(False))
    fixed = rows(True)
    assert [(r["voice"], r["streams"], r["frames"]) for r in fixed] == [
        ("design", 1, FRAMES), ("design", 2, FRAMES), ("clone", 1, FRAMES), ("clone", 2, FRAMES),
    ]  # fmt: skip
    assert all(r["ttfa_ms_p50"] > 0 and r["step_ms"] > 0 for r in fixed)
    assert all(set(r["phases_ms"]) == set(qwen_engine.PHASES) for r in fixed)
    assert "| queue | prompt | prefill | frames | decode |" in compare.phase_table(fixed, qwen_engine.PHASES)


def test_results_section_is_replaced_in_place(tmp_path: Path) -> None:
    doc = tmp_path / "RESULTS.md"
    doc.write_text("## Before\n\nkeep\n\n## After\n\nkeep too\n")
    compare.update_results(doc, "1.7b-cuda", compare.block("1.7b-cuda", "### one", "A"))
    compare.update_results(doc, "0.6b-cuda", compare.block("0.6b-cuda", "### two", "B"))
    compare.update_results(doc, "1.7b-cuda", compare.block("1.7b-cuda", "### one", "C"))
    text = doc.read_text()
    assert text.startswith("## Before\n\nkeep\n\n## After\n\nkeep too\n\n" + compare.SECTION)
    assert "C" in text and "\nA\n" not in text and text.index("### one") < text.index("### two")
    merged = tmp_path / "merged.md"
    merged.write_text("## Other\n\nx\n")
    assert compare.merge_blocks(doc, merged) == ["1.7b-cuda", "0.6b-cuda"]
    assert merged.read_text().count("<!-- /qwen-gpu:") == 2


def test_load_mode_reports_every_level(qwen_tiny_models: tuple[Path, Path], tmp_path: Path) -> None:
    """The closed loop, a mixed level included: audio flows, every figure is there, files are written."""
    design, base = map(str, qwen_tiny_models)
    argv = ["--design-model", design, "--base-model", base, "--levels", "design:1", "mixed:1+1", "--frames", "8",
            "--suppress-eos", "--warmup", "0.5", "--window", "2", "--out", str(tmp_path)]  # fmt: skip
    rows = qwen_load.main(argv)
    assert [(r["level"], r["streams"]) for r in rows] == [("design 1", 1), ("mixed 1+1", 2)]
    for r in rows:
        assert r["audio_per_s"] > 0 and r["utterances"] >= r["streams"] and not r["errors"]
        assert r["ttfa_ms"]["p50"] > 0 and r["x_real_time_p50"] > 0 and r["audio_s_per_utterance"] == 8 * 0.08
        assert r["underruns"] >= 0 and set(r["engine"]["share"]) == {"step", "codec", "prefill", "host"}
    assert set(rows[1]["engine"]["step_ms"]) == {"design", "base"}  # both models stepped in the mixed level
    assert rows[1]["engine"]["graphs"] == {kind: {"decode": 0, "codec": 0} for kind in ("design", "base")}  # a CPU captures none
    assert "| mixed 1+1 | 2 |" in (tmp_path / "load.md").read_text()
    assert len(json.loads((tmp_path / "load.json").read_text())["rows"]) == 2


def test_load_mode_saves_after_every_level(qwen_tiny_models: tuple[Path, Path], tmp_path: Path) -> None:
    """A run cut short (the GPU script's time limit) keeps the levels it finished: the files are rewritten after each."""
    design, base = map(str, qwen_tiny_models)
    args = qwen_load.parser().parse_args(["--design-model", design, "--base-model", base, "--levels", "design:1", "clone:1",
                                          "--frames", "4", "--warmup", "0.2", "--window", "0.8", "--out", str(tmp_path)])  # fmt: skip
    args.plan = [level for spec in args.levels for level in qwen_load.LevelSpec.parse(spec)]
    saved: list[tuple[int, str]] = []

    def on_row(rows: list[dict[str, Any]]) -> None:
        qwen_load.save(args, rows)
        on_disk = json.loads((tmp_path / "load.json").read_text())["rows"]
        saved.append((len(on_disk), (tmp_path / "load.md").read_text()))

    asyncio.run(qwen_load.run(args, on_row))
    assert [n for n, _ in saved] == [1, 2]
    assert "| design 1 |" in saved[0][1] and "| clone 1 |" not in saved[0][1] and "| clone 1 |" in saved[1][1]


def test_op_count_of_a_frame_folded_against_upstream_modules() -> None:
    """``bench.qwen_ops``: the folded predictor and the talker's fused norms dispatch far fewer ops (a count, not a time)."""
    from bench import qwen_ops

    counts = qwen_ops.count(layers=5, rows=2, talker_layers=2)
    folded, eager = counts["folded"], counts["eager"]
    # Per frame: 15 passes of 5 layers; eager runs 7 projections a layer and a head per codebook, folded 4 and 1.
    assert eager["linear"] == 15 * 5 * 7 + 15 and folded["linear"] + folded["matmul"] == 15 * 5 * 4 + 15
    assert folded["rms_norm"] == 15 * (5 * 4 + 1) and "pow" not in folded and "rsqrt" not in folded
    assert sum(folded.values()) < 0.6 * sum(eager.values())
    # The talker step: four norms a layer and the final one, each one fused op; the projections unchanged.
    fused, upstream = counts["talker fused"], counts["talker upstream"]
    assert fused["rms_norm"] == 2 * 4 + 1 and "rsqrt" not in fused and upstream["rsqrt"] == 2 * 4 + 1
    assert fused["linear"] == upstream["linear"] and sum(fused.values()) < sum(upstream.values())
