"""How long a CPU server takes to start and to stop: ``python -m bench.server_start``.

Starts ``python -m server --engine preview`` from a code tree (this one, or
another build's with ``--tree``) ``--runs`` times, each on a free loopback port
with a fresh data directory (a new voice library, as a first start has), and
times launch → the first 200 from ``/healthz``, and SIGINT → exit. The first
run finds an empty model cache, as on a machine's first start: the preview
voice's graph is optimised and saved (``server/engines/onnx_session.py``). The
later runs load it ("warm"). Certificates are made before the first run, so no
run pays for them. Prints a table; ``--out`` also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.attacks.target import ServerSpec, Target
from server.tls import ensure_certificates

ROOT = Path(__file__).resolve().parent.parent


def one_start(tree: Path, root: Path, index: int, extra: list[str]) -> dict[str, float]:
    spec = ServerSpec(args=tuple(extra), env={"MINESTREAM_MODEL_CACHE": str(root / "model-cache")})
    target = Target(tree, root / f"start{index}", root / "certs", spec)
    launched = time.perf_counter()
    try:
        target.start(timeout=120, poll=0.02)
        ready = time.perf_counter()
    finally:
        stopping = time.perf_counter()
        target.stop(timeout=30)
    return {"ready_s": ready - launched, "stop_s": time.perf_counter() - stopping}


def measure(tree: Path, runs: int, extra: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="minestream-start-") as folder:
        root = Path(folder)
        ensure_certificates(root / "certs")
        starts = [one_start(tree, root, i, extra) for i in range(runs)]
    warm = starts[1:] or starts
    return {
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "tree": str(tree),
        "args": extra,
        "first": starts[0],
        "warm_median": {key: statistics.median(s[key] for s in warm) for key in ("ready_s", "stop_s")},
        "starts": starts,
    }


def table(result: dict[str, Any]) -> str:
    first, warm = result["first"], result["warm_median"]
    return "\n".join([
        "| start | to ready | to stop |",
        "| --- | --- | --- |",
        f"| first (empty model cache) | {first['ready_s']:.2f} s | {first['stop_s']:.2f} s |",
        f"| later (median of {max(1, len(result['starts']) - 1)}) | {warm['ready_s']:.2f} s | {warm['stop_s']:.2f} s |",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.server_start", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6, help="starts in all, the first with an empty model cache (default 6)")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the code tree whose server starts, e.g. a worktree of another build")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    parser.add_argument("server_args", nargs="*", help="more arguments for the server, after --")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    result = measure(args.tree.resolve(), args.runs, args.server_args)
    print(table(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
