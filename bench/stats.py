"""Percentiles and small summaries; None where there is nothing to summarise."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def values(xs: Iterable[float | None]) -> list[float]:
    return [float(x) for x in xs if x is not None]


def percentile(xs: Iterable[float | None], q: float) -> float | None:
    data = values(xs)
    if not data:
        return None
    # "linear" matches what most monitoring tools report for small samples.
    return round(float(np.percentile(data, q)), 4)


def percentiles(xs: Iterable[float | None], qs: tuple[float, ...] = (50, 95, 99)) -> dict[str, float | None]:
    data = values(xs)
    return {f"p{int(q)}": percentile(data, q) for q in qs}


def median(xs: Iterable[float | None]) -> float | None:
    return percentile(xs, 50)


def fmt(x: float | None, digits: int = 0, unit: str = "") -> str:
    if x is None:
        return "–"
    return f"{x:.{digits}f}{unit}"
