"""``python -m bench.cluster``: what the Ray Serve hop costs (a benchmark, not a test).

One run, one machine: a local Ray (loopback, no dashboard) with the engine
tier deployed from ``server.replica``, and the same engine (preview, one worker)
in this process. Each sentence is spoken both ways, alternately, through the
engine interface the sessions use (``RayEngine`` is exactly the front's path):

- TTFA: from ``synthesize`` to the first chunk; the hop's cost is the
  difference of the medians (target: at most 5 ms) and their ratio.
- Per-chunk latency: the gap between consecutive chunks of a stream; within
  a rendered piece the engine makes them at once, so the median gap is the
  hop's cost per chunk.
- The replica times its own engine's first audio too (``first_audio``, by
  request tag): the front's TTFA less that, request by request, is the hop
  alone, apart from how fast the engine runs in the replica's process
  compared with this one (another process on the same two shared cores).
- Throughput: ``--streams`` concurrent streams for ``--rounds`` sentences each,
  seconds of audio per wall second, with one replica and then two.

CPU figures move 2-3x between machines and with other load: compare the ratios
of one run. Results go to ``bench/out/cluster-*.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from server.config import Settings
from server.engines.base import SAMPLE_RATE, Engine, SynthesisRequest, Voice

from . import corpus
from .stats import median, percentile

OUT = Path(__file__).resolve().parent / "out"
DESIGN = "a calm, clear narrator"


async def stream_once(engine: Engine, text: str) -> dict[str, Any]:
    """One segment: TTFA, the gaps between chunks, seconds of audio."""
    began = time.perf_counter()
    arrivals: list[float] = []
    samples = 0
    async for chunk in engine.synthesize(SynthesisRequest(text, Voice(design=DESIGN))):
        arrivals.append(time.perf_counter())
        samples += len(chunk)
    return {
        "ttfa_ms": (arrivals[0] - began) * 1000 if arrivals else None,
        "gaps_ms": [(b - a) * 1000 for a, b in zip(arrivals, arrivals[1:], strict=False)],
        "audio_s": samples / SAMPLE_RATE,
    }


async def latency(local: Engine, remote: Any, sentences: list[str]) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"in_process": [], "ray": []}
    for index, text in enumerate(sentences):
        order = [("in_process", local), ("ray", remote)]
        for name, engine in order if index % 2 == 0 else order[::-1]:  # alternate: neither always goes first
            runs[name].append(await stream_once(engine, text))
            if name == "ray":
                runs[name][-1]["tag"] = remote.last_tag
    out: dict[str, Any] = {}
    for name, results in runs.items():
        ttfa = [r["ttfa_ms"] for r in results]
        gaps = [g for r in results for g in r["gaps_ms"]]
        out[name] = {"ttfa_p50_ms": median(ttfa), "ttfa_p90_ms": percentile(ttfa, 90), "chunk_gap_p50_ms": median(gaps),
                     "chunk_gap_p90_ms": percentile(gaps, 90), "chunks": len(gaps) + len(results)}  # fmt: skip
    # Paired, request by request: the front's TTFA less the replica's own (the engine in the replica's process).
    inside = await remote._handle.first_audio.remote([r["tag"] for r in runs["ray"]])
    hops = [r["ttfa_ms"] - inside[r["tag"]] for r in runs["ray"] if r["tag"] in inside]
    local_s, ray_s = out["in_process"], out["ray"]
    out["hop"] = {
        "ttfa_added_p50_ms": round(ray_s["ttfa_p50_ms"] - local_s["ttfa_p50_ms"], 2),
        "ttfa_ratio_p50": round(ray_s["ttfa_p50_ms"] / local_s["ttfa_p50_ms"], 3),
        "chunk_gap_added_p50_ms": round(ray_s["chunk_gap_p50_ms"] - local_s["chunk_gap_p50_ms"], 3),
        "paired_ttfa_hop_p50_ms": median(hops),
        "paired_ttfa_hop_p90_ms": percentile(hops, 90),
        "replica_first_audio_p50_ms": median(inside.values()),
        "paired_requests": len(hops),
    }
    return out


async def throughput(engine: Engine, sentences: list[str], streams: int, rounds: int) -> dict[str, Any]:
    async def one(offset: int) -> float:
        audio = 0.0
        for i in range(rounds):
            audio += (await stream_once(engine, sentences[(offset + i) % len(sentences)]))["audio_s"]
        return audio

    began = time.perf_counter()
    audio = sum(await asyncio.gather(*(one(k) for k in range(streams))))
    wall = time.perf_counter() - began
    return {"streams": streams, "audio_s": round(audio, 2), "wall_s": round(wall, 2), "audio_per_wall_s": round(audio / wall, 3)}


def start_ray(num_cpus: int) -> str:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only, as server.cluster does locally
    os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")  # as a front sets it (server/engines/ray.py)
    import ray
    from ray import serve

    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(proxy_location="Disabled")
    return str(ray.get_runtime_context().gcs_address)


def deploy(settings: Settings, replicas: int) -> None:
    from ray import serve

    from server.replica import build_app

    serve.run(build_app(settings, replicas=replicas), name="bench", route_prefix=None)


async def wait_replicas(engine: Any, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await engine._refresh()
        if engine._running == count and len(engine._replicas) == count:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"{count} replicas did not come up")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from server.engines.preview import PreviewEngine
    from server.engines.ray import RayEngine

    settings = Settings(engine="preview", preview_workers=1, preview_threads=args.threads, data_dir=OUT / "cluster-data")
    sentences = [item.text for item in corpus.load(("short",)).items][: args.sentences]
    medium = [item.text for item in corpus.load(("medium",)).items]
    address = start_ray(args.num_cpus)
    deploy(settings, 1)
    local = PreviewEngine(workers=1, threads_per_worker=args.threads)
    remote = RayEngine(address, "bench")
    await local.start()
    await remote.start()
    try:
        await wait_replicas(remote, 1)
        for text in sentences[:3]:  # warm both paths (first calls connect, route, load caches)
            await stream_once(local, text)
            await stream_once(remote, text)
        result: dict[str, Any] = {"latency": await latency(local, remote, sentences)}
        result["throughput"] = {"in_process_1_worker": await throughput(local, medium, args.streams, args.rounds)}
        result["throughput"]["ray_1_replica"] = await throughput(remote, medium, args.streams, args.rounds)
        deploy(settings, 2)
        await wait_replicas(remote, 2)
        result["throughput"]["ray_2_replicas"] = await throughput(remote, medium, args.streams, args.rounds)
        one, two = result["throughput"]["ray_1_replica"], result["throughput"]["ray_2_replicas"]
        result["throughput"]["two_over_one"] = round(two["audio_per_wall_s"] / one["audio_per_wall_s"], 3)
    finally:
        await local.close()
        await remote.close()
    result["environment"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg(),
                             "sentences": len(sentences), "preview_threads": args.threads}  # fmt: skip
    return result


def markdown(result: dict[str, Any]) -> str:
    lat, hop, put = result["latency"], result["latency"]["hop"], result["throughput"]
    rows = [
        "| path | TTFA p50 | TTFA p90 | chunk gap p50 | chunk gap p90 |",
        "|---|---|---|---|---|",
        *(f"| {name} | {lat[name]['ttfa_p50_ms']:.1f} ms | {lat[name]['ttfa_p90_ms']:.1f} ms | {lat[name]['chunk_gap_p50_ms']:.2f} ms | "
          f"{lat[name]['chunk_gap_p90_ms']:.2f} ms |" for name in ("in_process", "ray")),
        "",
        f"Hop: TTFA +{hop['ttfa_added_p50_ms']} ms at the median (ratio {hop['ttfa_ratio_p50']}), chunk gap +{hop['chunk_gap_added_p50_ms']} ms.",
        f"Paired by request, the front's TTFA less the replica's own first audio (p50 {hop['replica_first_audio_p50_ms']} ms): "
        f"p50 {hop['paired_ttfa_hop_p50_ms']} ms, p90 {hop['paired_ttfa_hop_p90_ms']} ms ({hop['paired_requests']} requests).",
        "",
        "| throughput | streams | audio s / wall s |",
        "|---|---|---|",
        *(f"| {name} | {put[name]['streams']} | {put[name]['audio_per_wall_s']} |" for name in ("in_process_1_worker", "ray_1_replica", "ray_2_replicas")),
        "",
        f"Two replicas over one: {put['two_over_one']}x. Load average during the run: {result['environment']['load_avg']}.",
    ]  # fmt: skip
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=20, help="short sentences for the latency part (default 20)")
    parser.add_argument("--streams", type=int, default=4, help="concurrent streams for throughput (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="sentences per stream for throughput (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="threads of each Piper worker (default 1)")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2, help="CPUs the local Ray offers")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (OUT / f"cluster-{stamp}.json").write_text(json.dumps(result, indent=2))
    text = markdown(result)
    (OUT / f"cluster-{stamp}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
