"""``--compare A.json B.json``: two runs side by side, level by level, with B/A ratios."""

from __future__ import annotations

from typing import Any

from . import stats
from .report import describe_environment

_FIGURES: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("TTFA p50 ms", ("ttfa_ms", "p50"), 0),
    ("TTFA p95 ms", ("ttfa_ms", "p95"), 0),
    ("heard p95 ms", ("heard_ms", "p95"), 0),
    ("server TTFA p50 ms", ("server_ttfa_ms", "p50"), 0),
    ("RTF p50", ("rtf", "p50"), 3),
    ("audio s/s", ("audio_per_wall_s",), 1),
    ("underruns /min", ("underruns", "per_min"), 2),
    ("errors", ("errors",), 0),
    ("server CPU %", ("cpu", "server_pct"), 0),
)


def _get(summary: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = summary
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "–"
    if a == 0:
        return "=" if b == 0 else "∞"
    return f"{b / a:.2f}×"


def compare(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str] = ("A", "B")) -> str:
    by_level_a = {lv["level"]: lv["summary"] for lv in a["levels"]}
    by_level_b = {lv["level"]: lv["summary"] for lv in b["levels"]}
    shared = sorted(set(by_level_a) & set(by_level_b))
    lines = [
        f"# Comparison: {names[0]} vs {names[1]}",
        "",
        f"- **{names[0]}**: {a['created']}, {a['config']['transport']}/{a['config']['model']}; {describe_environment(a)}",
        f"- **{names[1]}**: {b['created']}, {b['config']['transport']}/{b['config']['model']}; {describe_environment(b)}",
        "",
        f"Each cell: {names[0]} → {names[1]} ({names[1]}/{names[0]}).",
        "",
        "| level | " + " | ".join(name for name, _, _ in _FIGURES) + " |",
        "|" + "---|" * (len(_FIGURES) + 1),
    ]
    for level in shared:
        cells = []
        for _, path, digits in _FIGURES:
            x, y = _get(by_level_a[level], path), _get(by_level_b[level], path)
            cells.append(f"{stats.fmt(x, digits)} → {stats.fmt(y, digits)} ({ratio(x, y)})")
        lines.append(f"| {level} | " + " | ".join(cells) + " |")
    only = sorted(set(by_level_a) ^ set(by_level_b))
    if only:
        lines += ["", f"Levels in only one run: {', '.join(map(str, only))}."]
    return "\n".join(lines) + "\n"
