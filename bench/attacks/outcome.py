"""What one attack on one server came to: a short cell for the table and every figure measured."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outcome:
    cell: str
    """One line for the Markdown table (the headline figures)."""
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    """How long the attack took, start-up of its server excluded."""

    @classmethod
    def failed(cls, exc: BaseException) -> Outcome:
        return cls(f"attack failed: {type(exc).__name__}: {str(exc)[:120]}", {"failed": f"{type(exc).__name__}: {exc}"})

    def as_dict(self) -> dict[str, Any]:
        return {"cell": self.cell, "seconds": round(self.seconds, 1), "figures": self.figures}


def mb(value: float | None) -> str:
    """A MiB figure for a cell: ``+1,512 MiB``."""
    return "?" if value is None else f"{value:+,.0f} MiB"


def secs(value: float | None, digits: int = 1) -> str:
    return "?" if value is None else f"{value:.{digits}f} s"
