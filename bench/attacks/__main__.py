"""``python -m bench.attacks``: the attacks of issue 13 against one or more code trees (see __init__)."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.probe import environment

from . import report, soak
from .catalog import ATTACKS
from .runner import Attack, run_tree
from .target import ServerSpec, Target

LOG_TAIL_BYTES = 200_000


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.attacks", description=(__doc__ or "").strip())
    add = p.add_argument
    add("--server-dir", action="append", type=Path, required=True, help="a code tree whose `python -m server` to attack (repeatable: one column each)")
    add("--label", action="append", default=[], help="column name for the matching --server-dir (default: folder name and commit)")
    add("--attacks", default="all", help="comma-separated keys or numbers (1a, 4, 4-emoji, ...), 'all' (default) or 'none'")
    add("--soak", action="store_true", help="also run the soak (attack 12) on each tree")
    add("--soak-minutes", type=float, default=10.0, help="soak length (default 10)")
    add("--baseline", type=Path, help="an earlier attacks.json whose columns come first (e.g. the 'before' run); "
        "a tree run again under the same --label updates its column")
    add("--out", type=Path, default=Path("bench/out/attacks"), help="where attacks.json, attacks.md, soak.png and logs/ go")
    add("--keep-scratch", action="store_true", help="keep each server's data and temp folders (printed)")
    return p


def choose(spec: str) -> list[Attack]:
    if spec == "all":
        return list(ATTACKS)
    if spec == "none":
        return []
    wanted = {k.strip() for k in spec.split(",") if k.strip()}
    chosen = [a for a in ATTACKS if a.key in wanted or re.sub(r"[a-z]$|-.*$", "", a.key) in wanted]
    unknown = wanted - {a.key for a in chosen} - {re.sub(r"[a-z]$|-.*$", "", a.key) for a in chosen}
    if unknown:
        raise SystemExit(f"unknown attacks {sorted(unknown)}; known: {', '.join(a.key for a in ATTACKS)}")
    return chosen


def commit(tree: Path) -> str | None:
    result = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=False)
    return (result.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")) or None


def _save_logs(scratch: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for log in scratch.glob("*/server.log"):
        data = log.read_bytes()
        (out / f"{log.parent.name}.log").write_bytes(data[-LOG_TAIL_BYTES:])


async def attack_tree(tree: Path, label: str, attacks: list[Attack], args: argparse.Namespace) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="attacks-"))
    print(f"{label}: {tree} (scratch {scratch})", flush=True)
    entry: dict[str, Any] = {"label": label, "dir": str(tree), "commit": commit(tree), "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                             "load_average": [round(x, 1) for x in os.getloadavg()], "outcomes": {}}
    try:
        outcomes = await run_tree(tree, attacks, scratch, log=lambda line: print(line, flush=True))
        entry["outcomes"] = {key: outcome.as_dict() for key, outcome in outcomes.items()}
        if args.soak:
            target = Target(tree, scratch / "soak", scratch / "certs", ServerSpec())
            await asyncio.to_thread(target.start)
            try:
                print(f"  soak: {soak.SESSIONS} sessions for {args.soak_minutes:g} min", flush=True)
                started = time.strftime("%Y-%m-%d %H:%M:%S %z")
                result = await soak.soak(target, args.soak_minutes)
                entry["soak"] = {**result.as_dict(), "started": started}
                print(f"  soak         {result.cell}", flush=True)
            finally:
                await asyncio.to_thread(target.stop)
    finally:
        _save_logs(scratch, args.out / "logs" / re.sub(r"[^\w.-]+", "_", label))
        if not args.keep_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return entry


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    attacks = choose(args.attacks)
    doc: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": shlex.join(["python", "-m", "bench.attacks", *(argv if argv is not None else sys.argv[1:])]),
        "environment": environment(),
        "attacks": [{"key": a.key, "title": a.title} for a in ATTACKS],
        "trees": [],
    }
    if args.baseline:
        base = report.load(args.baseline)
        doc["trees"] = [{"started": base["started"], "load_average": base["environment"].get("load_average"), **tree, "from": str(args.baseline)}
                        for tree in base["trees"]]
    for i, tree in enumerate(args.server_dir):
        tree = tree.resolve()
        label = args.label[i] if i < len(args.label) else f"{tree.name} @{commit(tree)}"
        report.merge(doc["trees"], await attack_tree(tree, label, attacks, args), doc["started"])
        report.write(doc, args.out)  # what is done survives a later failure
    series = {t["label"]: t["soak"]["figures"]["samples"] for t in doc["trees"] if t.get("soak")}
    if series:
        soak.plot(series, args.out / "soak.png")
    report.write(doc, args.out)
    print(f"\n{report.markdown(doc)}\nwritten to {args.out}/", flush=True)
    return doc


if __name__ == "__main__":
    asyncio.run(main())
