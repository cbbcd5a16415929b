"""The fixed sentence set (bench/sentences.json) and the voices sessions use."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

SENTENCES = Path(__file__).resolve().parent / "sentences.json"
CLASSES = ("short", "medium", "long")


@dataclass(frozen=True)
class Item:
    kind: str
    """short, medium or long."""
    index: int
    text: str


@dataclass(frozen=True)
class Corpus:
    items: tuple[Item, ...]
    designs: tuple[str, ...]

    def playlist(self, rng: random.Random) -> list[Item]:
        """One session's order: every item once, shuffled, so sessions do not speak in lockstep."""
        order = list(self.items)
        rng.shuffle(order)
        return order


def load(classes: tuple[str, ...] = CLASSES, path: Path = SENTENCES) -> Corpus:
    data = json.loads(path.read_text())
    unknown = set(classes) - set(CLASSES)
    if unknown:
        raise ValueError(f"unknown sentence classes {sorted(unknown)}; choose from {', '.join(CLASSES)}")
    items = tuple(Item(kind, i, text) for kind in classes for i, text in enumerate(data[kind]))
    return Corpus(items, tuple(data["designs"]))
