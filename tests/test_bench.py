"""The benchmark runs, stops by itself and writes well-formed figures.

These are short runs against the shared preview server: they check shapes and
invariants, never how fast anything is.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from bench import stats
from bench.player import Player, first_loud
from tests.conftest import ROOT, LiveServer

PNG = b"\x89PNG\r\n\x1a\n"


def run_module(module: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` in its own session; it must succeed and leave nothing running in that session.

    A session catches what the run leaves behind even after its parent has gone (orphans keep the
    session id), and nothing else: this worker's other children (a shared PostgreSQL forks backends
    and autovacuum workers whenever it likes) are not in it.
    """
    process = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    assert process.returncode == 0, stdout + stderr
    assert not in_session(process.pid), f"{module} left processes running: {in_session(process.pid)}"
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def in_session(session: int) -> list[int]:
    left = []
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):  # gone, or not ours to ask
            if os.getsid(proc.pid) == session and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc.pid)
    return left


def run_bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_module("bench", *args, timeout=timeout)


@pytest.fixture(scope="module")
def wss_run(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench-wss")
    run_bench("--preset", "quick", "--levels", "1,2", "--duration", "1.5", "--min-count", "1", "--warmup", "0.3", "--grace", "15",
              "--url", server.ws_url, "--ca", str(server.ca_file), "--out", str(out), "--quiet")
    return out


@pytest.fixture(scope="module")
def direct_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench-direct")
    run_bench("--engine-direct", "--levels", "1,2", "--model", "saturation", "--count", "4", "--sentences", "short",
              "--duration", "10", "--warmup", "0", "--out", str(out), "--quiet", "--no-plots")
    return out


def check_level(level: dict[str, Any]) -> None:
    summary = level["summary"]
    assert summary["utterances"] > 0 and summary["errors"] == 0, summary
    ttfa, heard, server_ttfa = summary["ttfa_ms"], summary["heard_ms"], summary["server_ttfa_ms"]
    assert 0 < ttfa["p50"] <= ttfa["p95"] <= ttfa["p99"]
    assert heard["p50"] >= ttfa["p50"] - 1e-6  # a sound is heard no earlier than it arrives
    assert server_ttfa["p50"] > 0
    assert 0 < summary["rtf"]["p50"] <= summary["rtf"]["max"]
    assert summary["audio_per_wall_s"] > 0
    assert summary["underruns"]["events"] >= 0 and summary["underruns"]["starved_ms"] >= 0
    assert summary["cpu"]["client_pct"] is not None
    for sample in level["samples"]:
        if sample.get("error"):
            continue
        assert sample["ttfa_ms"] > 0 and sample["audio_ms"] > 0 and sample["server_ttfa_ms"] > 0
        assert sample["voice"] in ("design", "clone") and sample["kind"] in ("short", "medium", "long")
        # The simulated player cannot finish before the audio has been played.
        assert sample["play_end_ms"] >= sample["ttfa_ms"] + sample["audio_ms"] - 1


def test_wss_run_writes_json_markdown_and_plots(wss_run: Path, server: LiveServer) -> None:
    doc = json.loads((wss_run / "bench.json").read_text())
    assert doc["schema"] == 1 and doc["config"]["transport"] == "wss"
    assert doc["engine"]["engine"]["name"] == "piper-preview"
    assert {"cpu", "cores_logical", "python", "packages", "gpu"} <= set(doc["environment"])
    assert [lv["level"] for lv in doc["levels"]] == [1, 2]
    for level in doc["levels"]:
        check_level(level)
    assert {s["voice"] for lv in doc["levels"] for s in lv["samples"]} == {"design", "clone"}
    assert doc["levels"][0]["summary"]["cpu"]["server_pct"] is not None  # from /metrics
    md = (wss_run / "bench.md").read_text()
    assert "| level | utts |" in md and "Machine:" in md and ("Highest passing level" in md or "No level passes" in md)
    for name in ("ttfa.png", "underruns.png"):
        assert (wss_run / name).read_bytes()[:8] == PNG
    # The temporary cloned voice is gone again.
    with server.http() as http:
        assert not [v for v in http.get("/v1/voices").json()["voices"] if v["name"] == "bench (temporary)"]


def test_engine_direct_runs_without_network(direct_run: Path) -> None:
    doc = json.loads((direct_run / "bench.json").read_text())
    assert doc["config"]["transport"] == "engine" and doc["config"]["url"] is None
    for level in doc["levels"]:
        check_level(level)
        assert level["summary"]["utterances"] >= 4  # --count, per level
    assert not (direct_run / "ttfa.png").exists()


def test_compare_puts_runs_side_by_side(wss_run: Path, direct_run: Path, tmp_path: Path) -> None:
    result = run_bench("--compare", str(wss_run / "bench.json"), str(direct_run / "bench.json"), "--out", str(tmp_path))
    text = (tmp_path / "compare.md").read_text()
    assert text == result.stdout.rstrip("\n") + "\n"
    rows = [line for line in text.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2 and "×)" in rows[0]


def test_metrics_expose_histograms_after_traffic(wss_run: Path, server: LiveServer) -> None:
    with server.http() as http:
        text = http.get("/metrics").text
    for name in ("minestream_ttfa_seconds_bucket", "minestream_rtf_ratio_bucket", "minestream_decode_seconds_bucket",
                 'minestream_utterances_total{path="socket"}', 'minestream_audio_seconds_total{path="http"}',
                 "minestream_active_sessions", "minestream_active_utterances", "minestream_build_info{",
                 "minestream_engine_queue_depth", 'minestream_errors_total{code="engine_error"}', "process_cpu_seconds_total"):
        assert name in text, name
    assert "_created" not in text
    counts = [line for line in text.splitlines() if line.startswith("minestream_ttfa_seconds_count")]
    assert sum(float(line.split()[-1]) for line in counts) > 0
    spoken = next(line for line in text.splitlines() if line.startswith('minestream_audio_seconds_total{path="socket"}'))
    assert float(spoken.split()[-1]) > 0


def test_player_counts_each_dry_spell_once() -> None:
    player = Player(sample_rate=1000, jitter_ms=100)
    chunk = np.full(100, 0.5, dtype=np.float32)  # 100 ms each
    player.feed(0.0, chunk)  # plays 0.1-0.2
    player.feed(0.15, chunk)  # in time: 0.2-0.3
    player.feed(0.5, chunk)  # dry from 0.3 to 0.5
    player.feed(0.55, chunk)  # in time again
    assert player.underruns == 1
    assert player.starved_s == pytest.approx(0.2)
    assert player.end == pytest.approx(0.7)
    assert player.heard == pytest.approx(0.0)


def test_heard_waits_for_the_first_loud_sample() -> None:
    player = Player(sample_rate=1000, jitter_ms=0)
    quiet = np.zeros(200, dtype=np.int16)
    loud = np.concatenate([np.zeros(50, dtype=np.int16), np.full(50, 1000, dtype=np.int16)])
    player.feed(1.0, quiet)
    player.feed(1.05, loud)  # arrives before the quiet part has played
    assert player.heard == pytest.approx(1.0 + 0.2 + 0.05)
    assert first_loud(np.array([0.001, 0.02], dtype=np.float32)) == 1
    assert first_loud(np.zeros(10, dtype=np.int16)) is None


def test_percentiles() -> None:
    assert stats.percentiles(range(1, 101)) == {"p50": 50.5, "p95": 95.05, "p99": 99.01}
    assert stats.percentiles([None, None]) == {"p50": None, "p95": None, "p99": None}


def test_webrtc_run_writes_well_formed_figures(guarded_server: LiveServer, tmp_path: Path) -> None:
    pytest.importorskip("aiortc")
    live = guarded_server  # it offers loopback ICE candidates only
    out = tmp_path / "bench-webrtc"
    # Saturation and short sentences: the track plays at real speed, so utterances must end inside a few seconds.
    run_bench("--transport", "webrtc", "--preset", "quick", "--levels", "1,2", "--model", "saturation", "--sentences", "short",
              "--duration", "2", "--min-count", "1", "--warmup", "0.3", "--grace", "10", "--url", live.ws_url, "--ca", str(live.ca_file),
              "--token", str(live.token), "--out", str(out), "--quiet", "--no-plots")
    doc = json.loads((out / "bench.json").read_text())
    assert doc["config"]["transport"] == "webrtc" and [lv["level"] for lv in doc["levels"]] == [1, 2]
    assert "first non-silent frame" in doc["engine"]["transport_note"]
    for level in doc["levels"]:
        check_level(level)
        assert [s["ttfa_ms"] for s in level["samples"] if s.get("measured") and s.get("ttfa_ms")]
    assert {s["voice"] for lv in doc["levels"] for s in lv["samples"]} == {"design", "clone"}
    with live.http(headers={"Authorization": f"Bearer {live.token}"}) as http:  # the temporary cloned voice is gone again
        assert not [v for v in http.get("/v1/voices").json()["voices"] if v["name"] == "bench (temporary)"]


def test_server_start_times_a_cold_and_a_warm_start(tmp_path: Path) -> None:
    out = tmp_path / "start.json"
    result = run_module("bench.server_start", "--runs", "2", "--out", str(out), timeout=120)  # every server it started has exited
    assert "first (empty model cache)" in result.stdout and "later (median of 1)" in result.stdout
    doc = json.loads(out.read_text())
    assert len(doc["starts"]) == 2 and doc["warm_median"] == doc["starts"][1]
    assert all(s["ready_s"] > 0 and s["stop_s"] > 0 for s in doc["starts"])
