"""The engine tier on Ray Serve: replicas that each own one engine, and what crosses the hop.

``EngineReplica`` is a Serve deployment whose replicas each run one engine (a
Qwen engine on its own GPU, or the preview engine on CPU) and stream its
chunks back through a streaming ``DeploymentHandle`` (``engines/ray.py`` is the
front's side). ``ReplicaRegistry`` is a one-replica deployment where every
engine replica reports, twice a second, what it has resident and how busy it
is, so that a front can show all replicas (a handle call reaches only one).

A request crosses as a ``WireRequest``: the text, the voice, and times as
offsets (clocks differ between machines). A cloned voice's reference travels
once: the front puts its audio in Ray's object store under the reference's
content key and sends only the object's ref; a replica fetches the audio the
first time it meets the key and keeps it, and its engine caches the prompt it
derives under the same key.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from ray import serve

from .config import Settings
from .engines import create_engine
from .engines.base import Reference, SynthesisRequest, Voice

log = logging.getLogger("minestream.replica")

LATENCY_SETTING = "RAY_SERVE_THROUGHPUT_OPTIMIZED"
REPORT_EVERY_S = 0.5
REPORT_FRESH_S = 3.0
"""A replica not heard from for this long is left out of the fronts' view (it is dead or stuck)."""
_REFERENCES_KEPT = 256


@dataclass(frozen=True)
class WireRequest:
    """One ``SynthesisRequest`` on its way to a replica."""

    text: str
    language: str
    first: bool
    due_in: float
    """Seconds from sending until the first audio is due (negative: overdue)."""
    design: str | None = None
    voice_id: str | None = None
    reference_key: str | None = None
    reference_text: str | None = None
    reference_audio: Any = None
    """An ``ObjectRef`` to the reference's float32 audio; fetched only by a replica that lacks the key."""
    tag: str | None = None
    """The front's name for this request; the replica keeps its own first-audio time under it (``first_audio``)."""


def capacity(settings: Settings) -> int:
    """Streams one replica serves at once: its engine's batch rows (the router sends no more)."""
    if settings.engine == "qwen":
        from .engines.qwen.engine import QwenEngine

        return int(inspect.signature(QwenEngine).parameters["rows"].default)
    # Piper renders one job per worker; a few streams per worker keep each busy between pieces.
    return 4 * (settings.preview_workers or 1)


class EngineReplica:
    """A Serve replica: one engine, its reference cache, and its counters."""

    async def __init__(self, settings: Settings, registry: Any) -> None:  # type: ignore[misc]  # Serve awaits it
        if settings.engine not in ("preview", "qwen"):
            raise ValueError(f"a replica runs the preview or qwen engine, not {settings.engine!r}")
        self.engine = create_engine(settings)
        await self.engine.start()
        context = serve.get_replica_context()
        self.replica_id = context.replica_id.unique_id
        self.pid = os.getpid()
        self.node = ray.get_runtime_context().get_node_id()
        self.counts = {"served": 0, "cancelled": 0, "failed": 0, "active": 0, "references_fetched": 0}
        self._references: OrderedDict[str, Reference] = OrderedDict()
        self._fetching: dict[str, asyncio.Future[Reference]] = {}
        self.first_audio_ms: deque[float] = deque(maxlen=256)
        """Time to first audio inside the replica, recent requests: a front's TTFA less this is the hop."""
        self._first_audio_by_tag: OrderedDict[str, float] = OrderedDict()
        self._registry = registry
        self._reporter = asyncio.create_task(self._report_forever(), name="replica-report")
        log.info("replica %s (pid %d) serves the %s engine", self.replica_id, self.pid, self.engine.info.name)

    def describe(self) -> dict[str, Any]:
        """What the front's ``ready`` says of the engine: this replica's engine, and whether it anchors designs."""
        return {"info": self.engine.info.as_message(), "anchors_designs": self.engine.info.kind == "qwen"}

    async def synthesize(self, wire: WireRequest) -> AsyncIterator[np.ndarray]:
        began = time.monotonic()
        request = SynthesisRequest(wire.text, await self._voice(wire), wire.language, began + wire.due_in, wire.first)
        self.counts["served"] += 1
        self.counts["active"] += 1
        stream = self.engine.synthesize(request)
        first = True
        try:
            async for chunk in stream:
                if first:
                    self.first_audio_ms.append((time.monotonic() - began) * 1000)
                    if wire.tag is not None:
                        self._first_audio_by_tag[wire.tag] = self.first_audio_ms[-1]
                    first = False
                yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            # The front closed its stream (cancel, disconnect): cancelled where it waits on the engine, or
            # closed where it waits to send; either way the engine drops the work before its next step.
            self.counts["cancelled"] += 1
            raise
        except Exception:
            self.counts["failed"] += 1
            raise
        finally:
            self.counts["active"] -= 1
            await stream.aclose()  # type: ignore[attr-defined]

    def first_audio(self, tags: list[str]) -> dict[str, float]:
        """This replica's own time to first audio (ms) of the requests so tagged that it served (the benchmark's hop)."""
        while len(self._first_audio_by_tag) > 1024:
            self._first_audio_by_tag.popitem(last=False)
        return {tag: self._first_audio_by_tag[tag] for tag in tags if tag in self._first_audio_by_tag}

    async def render_design(self, description: str, language: str) -> tuple[np.ndarray, str | None] | None:
        reference = await self.engine.render_design(description, language)
        return None if reference is None else (reference.audio, reference.text)

    async def _voice(self, wire: WireRequest) -> Voice:
        if wire.reference_key is None:
            return Voice(design=wire.design, voice_id=wire.voice_id)
        key = wire.reference_key
        reference = self._references.get(key)
        if reference is None:
            # Streams that meet a new key together share one fetch.
            fetch = self._fetching.get(key)
            if fetch is None:
                fetch = self._fetching[key] = asyncio.ensure_future(self._fetch(wire))
                fetch.add_done_callback(lambda _: self._fetching.pop(key, None))
            reference = await asyncio.shield(fetch)
        else:
            self._references.move_to_end(key)
        return Voice(design=wire.design, reference=reference, voice_id=wire.voice_id)

    async def _fetch(self, wire: WireRequest) -> Reference:
        assert wire.reference_key is not None
        audio = np.array(await wire.reference_audio, dtype=np.float32)  # a copy: the object store's is read-only
        reference = Reference(audio=audio, text=wire.reference_text, key=wire.reference_key)
        self.counts["references_fetched"] += 1
        self._references[wire.reference_key] = reference
        while len(self._references) > _REFERENCES_KEPT:
            self._references.popitem(last=False)
        return reference

    def state(self) -> dict[str, Any]:
        health = self.engine.health()
        return {
            "id": self.replica_id,
            "pid": self.pid,
            "node": self.node,
            "engine": self.engine.info.name,
            "state": health.get("state", "ready"),
            "resident": health.get("resident", list(self.engine.info.models)),
            "busy": health.get("busy", health.get("active_streams", 0)),
            "queue_depth": health.get("queue_depth", 0),
            "references": len(self._references),
            "first_audio_p50_ms": round(float(np.median(self.first_audio_ms)), 2) if self.first_audio_ms else None,
            **self.counts,
        }

    async def _report_forever(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a registry being replaced: the next report reaches the new one
                await asyncio.wait_for(self._registry.report.remote(self.state()), timeout=5)
            await asyncio.sleep(REPORT_EVERY_S)

    async def __del__(self) -> None:
        self._reporter.cancel()
        await self.engine.close()


class ReplicaRegistry:
    """The last report of every engine replica, for the fronts' ``/healthz`` and ``ready``."""

    def __init__(self) -> None:
        self._reports: dict[str, tuple[float, dict[str, Any]]] = {}

    def report(self, state: dict[str, Any]) -> None:
        self._reports[state["id"]] = (time.monotonic(), state)

    def snapshot(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        for replica_id in [k for k, (at, _) in self._reports.items() if now - at > 10 * REPORT_FRESH_S]:
            del self._reports[replica_id]
        fresh = sorted(((at, state) for at, state in self._reports.values() if now - at <= REPORT_FRESH_S), key=lambda item: item[1]["id"])
        return [{**state, "reported_s_ago": round(now - at, 2)} for at, state in fresh]


def build_app(
    settings: Settings,
    *,
    replicas: int = 1,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    max_ongoing: int | None = None,
    replica_cpus: float = 1.0,
) -> Any:
    """The Serve application: the registry and the engine replicas (fixed, or autoscaled on ongoing requests)."""
    ongoing = max_ongoing or capacity(settings)
    # Serve's latency settings (user code and router on the replica's own loop, requests over gRPC):
    # they take the hop's first-audio cost from ~11 to ~4 ms here (bench/RESULTS.md). The replica's
    # code never blocks its loop (the engine works on its own threads), which is what they ask.
    actor: dict[str, Any] = {"num_cpus": replica_cpus, "runtime_env": {"env_vars": {LATENCY_SETTING: "1"}}}
    if settings.engine == "qwen":
        actor["num_gpus"] = 1  # one GPU per replica: each holds both Qwen models and its CUDA graphs
    options: dict[str, Any] = {
        "name": "EngineReplica",
        "max_ongoing_requests": ongoing,
        "ray_actor_options": actor,
        "health_check_period_s": 2.0,
        "graceful_shutdown_timeout_s": 10.0,
    }
    if min_replicas is not None or max_replicas is not None:
        low = min_replicas if min_replicas is not None else 1
        high = max(max_replicas if max_replicas is not None else low, low)
        options["autoscaling_config"] = {
            "min_replicas": low,
            "initial_replicas": max(low, 1),
            "max_replicas": high,
            # Scale up before a replica's rows are full: streams that queue wait for their first audio.
            "target_ongoing_requests": max(1.0, 0.75 * ongoing),
        }
    else:
        options["num_replicas"] = replicas
    registry = serve.deployment(name="ReplicaRegistry", num_replicas=1, ray_actor_options={"num_cpus": 0})(ReplicaRegistry)
    engine = serve.deployment(**options)(EngineReplica)
    return engine.bind(settings, registry.bind())
