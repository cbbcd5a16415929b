"""PNG plots: TTFA percentiles and underruns against concurrency."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def _series(levels: list[dict[str, Any]], *path: str) -> list[float | None]:
    out = []
    for level in levels:
        value: Any = level["summary"]
        for key in path:
            value = None if value is None else value.get(key)
        out.append(value)
    return out


def _plain() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda y, _: f"{y:g}")


def _none() -> Any:
    from matplotlib.ticker import NullFormatter

    return NullFormatter()


def _axis(ax: Any, xs: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])
    ax.set_xlabel("concurrent sessions")
    ax.grid(True, which="both", alpha=0.3)


def ttfa_plot(doc: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    levels = doc["levels"]
    xs = [lv["level"] for lv in levels]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for key, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^-")):
        ax.plot(xs, _series(levels, "ttfa_ms", key), style, label=f"client TTFA {key}")
    ax.plot(xs, _series(levels, "heard_ms", "p95"), "x--", label="heard p95")
    ax.plot(xs, _series(levels, "server_ttfa_ms", "p95"), "d:", label="server TTFA p95")
    ax.axhline(doc["config"]["target_ms"], color="red", lw=1, alpha=0.6, label=f"target {doc['config']['target_ms']:.0f} ms")
    _axis(ax, xs)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_plain())
    low, high = ax.get_ylim()
    # Label the minor ticks only where a decade or less is shown; more would overlap.
    ax.yaxis.set_minor_formatter(_plain() if high / max(low, 1e-9) < 12 else _none())
    ax.set_ylabel("ms (log scale)")
    ax.set_title(f"Time to first audio, {doc['config']['model']} over {doc['config']['transport']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def underrun_plot(doc: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    levels = doc["levels"]
    xs = [lv["level"] for lv in levels]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    rate = [v or 0.0 for v in _series(levels, "underruns", "per_min")]
    ax.plot(xs, rate, "o-", color="tab:red", label="underrun events per minute of audio")
    ax.set_ylabel("events / min")
    ax.set_ylim(bottom=0, top=max(1.0, max(rate) * 1.15))
    _axis(ax, xs)
    twin = ax.twinx()
    twin.plot(xs, [v or 0.0 for v in _series(levels, "audio_per_wall_s")], "s--", color="tab:blue", label="audio s per wall s")
    twin.set_ylabel("audio seconds per wall second")
    twin.set_ylim(bottom=0)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + twin.get_legend_handles_labels()[1]
    ax.legend(handles, labels, fontsize=8, loc="upper left")
    ax.set_title(f"Underruns (jitter buffer {doc['config']['jitter_ms']:.0f} ms) and throughput")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
