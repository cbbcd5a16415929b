"""Figures per level, and the JSON and Markdown that carry them."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from . import stats
from .corpus import CLASSES
from .load import Level, LoadConfig, as_dict

SCHEMA = 1


def summarize(level: Level, config: LoadConfig) -> dict[str, Any]:
    measured = [s for s in level.samples if s.get("measured")]
    good = [s for s in measured if not s.get("error")]
    audio_s = sum(s.get("audio_ms") or 0 for s in good) / 1000
    # Throughput counts audio whose last chunk arrived inside the window, so
    # long texts started near the end are not credited with audio made later.
    lo, hi = config.warmup_s, config.warmup_s + level.window_s
    made_s = sum((s.get("audio_ms") or 0) for s in level.samples if not s.get("error") and s.get("last_ms") is not None
                 and lo <= s["t"] + s["last_ms"] / 1000 <= hi) / 1000
    events = sum(s.get("underruns", 0) for s in good)
    errors = Counter(str(s["error"]) for s in measured if s.get("error"))
    summary: dict[str, Any] = {
        "sessions": level.level,
        "utterances": len(good),
        "errors": sum(errors.values()),
        "errors_by_code": dict(errors),
        "ttfa_ms": stats.percentiles(s.get("ttfa_ms") for s in good),
        "heard_ms": stats.percentiles(s.get("heard_ms") for s in good),
        "server_ttfa_ms": stats.percentiles(s.get("server_ttfa_ms") for s in good),
        "rtf": {**stats.percentiles((s.get("rtf") for s in good), (50, 95)), "max": max(stats.values(s.get("rtf") for s in good), default=None)},
        "audio_s": round(audio_s, 2),
        "audio_per_wall_s": round(made_s / level.window_s, 2),
        "underruns": {
            "events": events,
            "per_min": round(events / (audio_s / 60), 3) if audio_s else None,
            "starved_ms": round(sum(s.get("starved_ms", 0.0) for s in good), 1),
            "utterances_affected": sum(1 for s in good if s.get("underruns")),
        },
        "by_kind": {k: _group(good, "kind", k) for k in CLASSES if any(s.get("kind") == k for s in good)},
        "by_voice": {v: _group(good, "voice", v) for v in ("design", "clone") if any(s.get("voice") == v for s in good)},
        "cpu": level.cpu,
        "server": {k: v for k, v in level.server.items() if k != "histograms"},
    }
    p95 = summary["ttfa_ms"]["p95"]
    summary["ok"] = bool(good) and p95 is not None and p95 < config.target_ms and events == 0 and not errors
    return summary


def _group(samples: list[dict[str, Any]], key: str, value: str) -> dict[str, Any]:
    group = [s for s in samples if s.get(key) == value]
    return {
        "n": len(group),
        "ttfa_ms": stats.percentiles((s.get("ttfa_ms") for s in group), (50, 95)),
        "server_ttfa_ms": stats.percentiles((s.get("server_ttfa_ms") for s in group), (50, 95)),
        "rtf_p50": stats.median(s.get("rtf") for s in group),
        "underruns": sum(s.get("underruns", 0) for s in group),
    }


def best_level(levels: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The highest level that passes (p95 TTFA under target, no underruns, no errors)."""
    passing = [lv for lv in levels if lv["summary"]["ok"]]
    return max(passing, key=lambda lv: lv["level"]) if passing else None


def document(config: dict[str, Any], environment: dict[str, Any], engine: dict[str, Any], levels: list[Level], note: str | None) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config,
        "environment": environment,
        "engine": engine,
        "levels": [as_dict(level) for level in levels],
        "note": note,
    }


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")


def load_json(path: Path) -> dict[str, Any]:
    doc = json.loads(Path(path).read_text())
    if doc.get("schema") != SCHEMA:
        raise SystemExit(f"{path}: not a bench result (schema {doc.get('schema')!r})")
    return doc


# --- Markdown ------------------------------------------------------------------

HEADER = ("| level | utts | err | TTFA p50 / p95 / p99 ms | heard p50 / p95 ms | server TTFA p50 / p95 ms | RTF p50 / p95 "
          "| audio s/s | underruns /min | starved ms | CPU % client / server / machine (others) | ok |")


def row(level: dict[str, Any]) -> str:
    s = level["summary"]
    t, h, v, r, u, c = s["ttfa_ms"], s["heard_ms"], s["server_ttfa_ms"], s["rtf"], s["underruns"], s["cpu"]
    f = stats.fmt
    return (f"| {level['level']} | {s['utterances']} | {s['errors']} | {f(t['p50'])} / {f(t['p95'])} / {f(t['p99'])} "
            f"| {f(h['p50'])} / {f(h['p95'])} | {f(v['p50'])} / {f(v['p95'])} | {f(r['p50'], 3)} / {f(r['p95'], 3)} "
            f"| {f(s['audio_per_wall_s'], 1)} | {f(u['per_min'], 2)} | {f(u['starved_ms'])} "
            f"| {f(c.get('client_pct'), 1)} / {f(c.get('server_pct'))} / {f(c.get('machine_pct'))} ({f(c.get('other_pct'))}) | {'yes' if s['ok'] else 'no'} |")


def kind_table(levels: list[dict[str, Any]]) -> list[str]:
    kinds = [k for k in CLASSES if any(k in lv["summary"]["by_kind"] for lv in levels)]
    head = "| level | " + " | ".join(f"{k} TTFA p50 / p95 (server p50) ms" for k in kinds) + " |"
    lines = [head, "|" + "---|" * (len(kinds) + 1)]
    for level in levels:
        cells = []
        for k in kinds:
            g = level["summary"]["by_kind"].get(k)
            cells.append("–" if g is None else f"{stats.fmt(g['ttfa_ms']['p50'])} / {stats.fmt(g['ttfa_ms']['p95'])} ({stats.fmt(g['server_ttfa_ms']['p50'])})")
        lines.append(f"| {level['level']} | " + " | ".join(cells) + " |")
    return lines


def describe_environment(doc: dict[str, Any]) -> str:
    env, engine = doc["environment"], doc["engine"].get("engine", {})
    gpu = ", ".join(env.get("gpu") or []) or "no GPU"
    return (f"{env.get('cpu')} ({env.get('cores_logical')} logical cores, {env.get('memory_gib')} GiB), {gpu}; {env.get('os')}; "
            f"Python {env.get('python')}; engine {engine.get('name')} ({', '.join(engine.get('models', []))}, "
            f"{engine.get('workers', doc['engine'].get('health', {}).get('engine', {}).get('workers', '?'))} workers); "
            f"load average at start {env.get('load_average')}; commit {env.get('commit')}")


def markdown(doc: dict[str, Any]) -> str:
    cfg = doc["config"]
    levels = doc["levels"]
    lines = [
        f"# MineStream benchmark, {doc['created']}",
        "",
        f"**Machine:** {describe_environment(doc)}",
        "",
        f"**Run:** transport {cfg['transport']}, load {cfg['model']}, voices {cfg['voices']}, sentences {', '.join(cfg['sentences'])}, "
        f"{cfg['duration_s']} s per level ({cfg['warmup_s']} s warm-up left out), jitter buffer {cfg['jitter_ms']} ms, "
        f"target p95 TTFA < {cfg['target_ms']} ms.",
        "",
        HEADER,
        "|" + "---|" * (HEADER.count("|") - 1),
        *[row(level) for level in levels],
        "",
        *kind_table(levels),
        "",
        verdict(levels, cfg),
    ]
    if doc.get("note"):
        lines += ["", f"_{doc['note']}_"]
    if doc.get("engine", {}).get("transport_note"):
        lines += ["", f"_{doc['engine']['transport_note']}_"]
    lines += ["", _legend(cfg)]
    return "\n".join(lines) + "\n"


def verdict(levels: list[dict[str, Any]], cfg: dict[str, Any]) -> str:
    best = best_level(levels)
    if best is None:
        return f"**No level passes** (p95 TTFA < {cfg['target_ms']} ms, no underruns, no errors)."
    s = best["summary"]
    below = [str(lv["level"]) for lv in levels if lv["level"] < best["level"] and not lv["summary"]["ok"]]
    text = (f"**Highest passing level: {best['level']} sessions** (p95 TTFA {stats.fmt(s['ttfa_ms']['p95'])} ms < {cfg['target_ms']} ms, "
            f"no underruns, no errors; p50 {stats.fmt(s['ttfa_ms']['p50'])} ms, server p50 {stats.fmt(s['server_ttfa_ms']['p50'])} ms, "
            f"{stats.fmt(s['audio_per_wall_s'], 1)} audio s per wall s).")
    if below:
        text += f" Lower levels that did not pass: {', '.join(below)} (see their rows)."
    return text


def _legend(cfg: dict[str, Any]) -> str:
    return (
        "TTFA: speak sent to the first audio payload received (client side); heard: to the first sample above -40 dBFS "
        "playing, playback starting at first arrival; server TTFA: from `done`. RTF: generation time over audio duration, per "
        f"utterance (server). Underruns: a player per stream starts {cfg['jitter_ms']} ms after first audio and plays at real speed; "
        "each time it runs dry is one event (per minute of audio played). CPU: client and server in percent of one core; "
        "machine: all cores busy, in percent; others: what other processes used of the machine (a disturbed level shows here)."
    )
