"""The run as JSON (every figure) and as a Markdown table (one row per attack, one column per tree)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _number(key: str) -> int:
    """The issue's item number of an attack key (``4-emoji`` → 4, ``1b`` → 1)."""
    number = key.split("-")[0].rstrip("abcdefghijklmnopqrstuvwxyz")
    return int(number) if number.isdigit() else 99


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", " ")


def markdown(doc: dict[str, Any]) -> str:
    trees = doc["trees"]
    env = doc["environment"]
    lines = [
        "# Hardening: attacks (issue 13)",
        "",
        f"{env.get('cpu')}, {env.get('cores_logical')} logical cores, {env.get('memory_gib')} GiB; Python {env.get('python')}; "
        f"`{doc.get('command', 'python -m bench.attacks')}` started {doc['started']}.",
        "Server: preview engine, TLS on loopback, one fresh server per attack. Memory: the server's VmRSS/VmHWM "
        "(MiB, growth over its RSS before the attack).",
        "",
    ]
    for tree in trees:
        updated = "".join(f"; {', '.join(u['attacks'])} rerun {u['started']}" for u in tree.get("updates", []))
        lines.append(f"- **{tree['label']}**: `{tree['dir']}` at {tree.get('commit') or '?'}, run {tree.get('started', '?')} "
                     f"(load average {tree.get('load_average', '?')}){updated}")
    lines += ["", "| attack | " + " | ".join(t["label"] for t in trees) + " |", "|---|" + "---|" * len(trees)]
    # Rows in the order, whatever order the attacks ran in.
    for attack in sorted(doc["attacks"], key=lambda a: _number(a["key"])):
        cells = [_escape(t["outcomes"].get(attack["key"], {}).get("cell", "not run")) for t in trees]
        if all(c == "not run" for c in cells):
            continue
        lines.append(f"| {_escape(attack['title'])} | " + " | ".join(cells) + " |")
    soaks = [t for t in trees if t.get("soak")]
    if soaks:
        lines += ["", "| soak | " + " | ".join(t["label"] for t in soaks) + " |", "|---|" + "---|" * len(soaks)]
        lines.append(f"| 12 · {soaks[0]['soak']['figures'].get('sessions')} sessions, closed loop | "
                     + " | ".join(_escape(t["soak"]["cell"]) for t in soaks) + " |")
    return "\n".join(lines) + "\n"


def write(doc: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "attacks.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False, default=str) + "\n")
    (out / "attacks.md").write_text(markdown(doc))


def merge(trees: list[dict[str, Any]], entry: dict[str, Any], started: str) -> None:
    """Add a tree's column; a column of the same label (from ``--baseline``) is updated instead."""
    for tree in trees:
        if tree["label"] == entry["label"]:
            tree["outcomes"].update(entry["outcomes"])
            if entry.get("soak"):
                tree["soak"] = entry["soak"]
            rerun = sorted(entry["outcomes"]) + (["soak"] if entry.get("soak") else [])
            tree.setdefault("updates", []).append({"started": started, "commit": entry["commit"], "attacks": rerun})
            return
    trees.append(entry)


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc
