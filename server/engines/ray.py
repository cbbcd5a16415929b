"""``RayEngine``: the engine interface over replicas on a Ray Serve cluster.

``python -m server --engine ray --ray-address ADDRESS`` makes the front a Ray
driver that streams each segment from an ``EngineReplica`` (``server/replica.py``,
deployed by ``python -m server.cluster``) through a streaming
``DeploymentHandle``. Serve's router sends each stream to a replica with room
(power of two choices on ongoing requests) and keeps it there to its end.

- Closing the stream (cancel, disconnect) cancels the call: the replica's
  engine drops the work before its next step.
- A replica that dies before any audio came is retried on another one; once
  audio was sent, the segment ends with ``EngineError`` and the session lives
  on while Serve starts a replacement.
- No replica (the application is not deployed, or none is running) is
  ``Unavailable`` at once rather than a wait in the router's queue.
- A reference is put in the object store once per content key; requests
  carry only its ref (see ``WireRequest``).

``health()`` (hence ``/healthz``) lists the replicas as they last reported to
the ``ReplicaRegistry``: what each has resident and how busy it is; a
background task refreshes that view every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import is_loopback
from ..errors import EngineError, MineStreamError, Unavailable
from .base import Engine, EngineInfo, Reference, SynthesisRequest, Voice

log = logging.getLogger("minestream.engines.ray")

FIRST_CHUNK_TIMEOUT_S = 60.0
"""A stream with no audio by then is given up (``Unavailable``): no replica took it."""
_RETRIES = 2
_REFRESH_S = 1.0
_PUTS_KEPT = 64


def _loopback(address: str) -> bool:
    return is_loopback(address.removeprefix("ray://").rsplit(":", 1)[0].strip("[]"))


def prepare_environment(address: str) -> None:
    """Ray's settings that must be in the environment before ``import ray`` (set only where unset).

    A cluster on a loopback address is this machine's alone: the driver then
    offers the replicas its loopback address too (Ray otherwise picks the
    machine's outward one). A token-authenticated cluster (Ray's default) wants
    the token from a driver that names its address; Ray reads it from
    ``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token`` once ``RAY_AUTH_MODE=token``.
    """
    if _loopback(address):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # i.e. "single machine": use 127.0.0.1
    # Serve's router on the front's own loop, requests over gRPC: a few ms less per stream (the replicas
    # run with the same setting; see server/replica.py).
    os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"


class RayEngine(Engine):
    def __init__(self, address: str, app: str = "minestream", *, first_chunk_timeout_s: float = FIRST_CHUNK_TIMEOUT_S) -> None:
        self.address = address
        self.app = app
        self.first_chunk_timeout_s = first_chunk_timeout_s
        self.info = RayEngineInfo("ray", "ray", [], ["auto"], True, True, f"Ray Serve application {app!r} at {address}: not found yet", view=self._view)
        self._handle: Any = None
        self._stream: Any = None
        self._registry: Any = None
        self._anchors = False
        self._replicas: list[dict[str, Any]] = []
        self._running = 0
        self._state = "starting"
        self._puts: OrderedDict[str, Any] = OrderedDict()
        self._refresher: asyncio.Task[None] | None = None
        self._tags = itertools.count()
        self.last_tag: str | None = None
        """The tag of the latest request sent: a replica's ``first_audio`` tells its own timing under it."""
        self.retried = 0

    # -- start and stop ----------------------------------------------------

    async def start(self) -> None:
        prepare_environment(self.address)
        import ray

        # Before the server accepts anyone: connecting is a blocking call of Ray's.
        ray.init(address=self.address, namespace="minestream-front", log_to_driver=False, configure_logging=False, ignore_reinit_error=True)
        await self._refresh()
        if self._handle is None:
            log.warning("no Serve application %r on the Ray cluster at %s yet; requests are unavailable until it is deployed", self.app, self.address)
        self._refresher = asyncio.create_task(self._refresh_forever(), name="ray-engine-refresh")

    async def close(self) -> None:
        self._state = "closed"
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        import ray

        self._puts.clear()
        await asyncio.to_thread(ray.shutdown)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(_REFRESH_S)
            try:
                await self._refresh()
            except Exception as exc:  # the cluster is in flux; the next refresh tries again
                log.warning("refreshing the replica view failed: %s: %s", type(exc).__name__, exc)

    async def _refresh(self) -> None:
        """Find the application (once), then count its running replicas and read their reports."""
        from ray import serve

        if self._handle is None and not await self._connect(serve):
            self._state = "unavailable"
            return
        status = await asyncio.to_thread(serve.status)
        application = status.applications.get(self.app)
        deployment = application.deployments.get("EngineReplica") if application else None
        states = {} if deployment is None else deployment.replica_states
        self._running = sum(int(n) for state, n in states.items() if str(getattr(state, "value", state)) == "RUNNING")
        self._replicas = await asyncio.wait_for(self._registry.snapshot.remote(), timeout=5)
        self._state = "ready" if self._running else "unavailable"

    async def _connect(self, serve: Any) -> bool:
        try:
            handle = await asyncio.to_thread(serve.get_app_handle, self.app)
        except Exception:  # not deployed (yet)
            return False
        described = await asyncio.wait_for(handle.describe.remote(), timeout=30)
        info = described["info"]
        self._anchors = bool(described["anchors_designs"])
        self.info = RayEngineInfo(
            name=f"ray:{info['name']}",
            kind="ray",
            models=list(info["models"]),
            languages=list(info["languages"]),
            design=bool(info["design"]),
            clone=bool(info["clone"]),
            note=f"Replicas of the {info['kind']} engine on Ray Serve (application {self.app!r} at {self.address}). {info.get('note', '')}".strip(),
            view=self._view,
        )
        self._registry = serve.get_deployment_handle("ReplicaRegistry", self.app)
        self._handle, self._stream = handle, handle.options(stream=True)
        return True

    # -- synthesis ---------------------------------------------------------

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[np.ndarray]:
        if self._stream is None or self._running == 0:
            await self._refresh()  # maybe it is back since the last look
            if self._stream is None or self._running == 0:
                raise Unavailable(f"no engine replica is running (Ray Serve application {self.app!r} at {self.address})")
        wire = self._wire(request)
        for attempt in range(_RETRIES + 1):
            sent = False
            call = self._stream.synthesize.remote(wire)
            chunks = self._chunks(call)
            try:
                async for chunk in chunks:
                    sent = True
                    yield chunk
                return
            except MineStreamError:
                raise
            except Exception as exc:
                if sent or attempt == _RETRIES or not _replica_lost(exc):
                    raise _engine_error(exc, sent) from exc
                self.retried += 1
                log.warning("engine replica lost before the first audio (%s); retrying on another", type(exc).__name__)
            finally:
                await chunks.aclose()
                call.cancel()  # no-op once finished; otherwise the replica stops this stream

    async def _chunks(self, call: Any) -> AsyncGenerator[np.ndarray, None]:
        iterator = call.__aiter__()
        try:
            first = await asyncio.wait_for(iterator.__anext__(), self.first_chunk_timeout_s)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise Unavailable(f"no engine replica answered within {self.first_chunk_timeout_s:.0f} s") from None
        yield first
        async for chunk in iterator:
            yield chunk

    def _wire(self, request: SynthesisRequest) -> Any:
        from ..replica import WireRequest

        voice, reference = request.voice, request.voice.reference
        key = None if reference is None else (reference.key or _audio_key(reference.audio))
        self.last_tag = f"{os.getpid()}-{next(self._tags)}"
        return WireRequest(
            text=request.text,
            language=request.language,
            first=request.first,
            due_in=request.due - time.monotonic(),
            design=voice.design,
            voice_id=voice.voice_id,
            reference_key=key,
            reference_text=None if reference is None else reference.text,
            reference_audio=None if reference is None or key is None else self._put(key, reference.audio),
            tag=self.last_tag,
        )

    def _put(self, key: str, audio: np.ndarray) -> Any:
        """The audio's object-store ref, put once per key (a few MB at most, local shared memory)."""
        ref = self._puts.get(key)
        if ref is None:
            import ray

            ref = self._puts[key] = ray.put(np.ascontiguousarray(audio, dtype=np.float32))
            while len(self._puts) > _PUTS_KEPT:
                self._puts.popitem(last=False)  # dropping the ref frees the object once no replica borrows it
        else:
            self._puts.move_to_end(key)
        return ref

    # -- voices --------------------------------------------------------------

    def continuation(self, voice: Voice, text: str, audio: np.ndarray) -> Voice:
        """As the replicas' engine does: Qwen anchors a designed voice to its first audio, preview does not."""
        if not self._anchors or voice.design is None or voice.reference is not None or not np.asarray(audio).size:
            return voice
        audio = np.asarray(audio, dtype=np.float32)
        reference = Reference(audio=audio, text=text.strip() or None, key=f"design-{_audio_key(audio)}")
        return Voice(design=voice.design, reference=reference, voice_id=voice.voice_id)

    async def render_design(self, description: str, language: str = "auto") -> Reference | None:
        if self._handle is None:
            raise Unavailable(f"no engine replica is running (Ray Serve application {self.app!r} at {self.address})")
        try:
            rendered = await self._handle.render_design.remote(description, language)
        except MineStreamError:
            raise
        except Exception as exc:
            raise _engine_error(exc, False) from exc
        return None if rendered is None else Reference(audio=np.array(rendered[0], dtype=np.float32), text=rendered[1])

    def _view(self) -> dict[str, Any]:
        """The replicas as last seen: in ``ready`` (through ``info``) and in ``/healthz``."""
        return {"replicas_running": self._running, "replicas": list(self._replicas)}

    def health(self) -> dict[str, Any]:
        replicas = self._replicas
        return {
            "state": self._state,
            "address": self.address,
            "app": self.app,
            **self._view(),
            "queue_depth": sum(int(r.get("queue_depth", 0)) for r in replicas),
            "active_streams": sum(int(r.get("active", 0)) for r in replicas),
            "retried": self.retried,
        }


@dataclass(frozen=True)
class RayEngineInfo(EngineInfo):
    """``EngineInfo`` whose message also lists the replicas, so ``ready`` shows them as ``/healthz`` does."""

    view: Callable[[], dict[str, Any]] | None = field(default=None, compare=False, repr=False)

    def as_message(self) -> dict[str, Any]:
        return {**super().as_message(), **(self.view() if self.view is not None else {})}


def _audio_key(audio: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()[:32]


def _replica_lost(exc: BaseException) -> bool:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    return isinstance(exc, (ActorDiedError, ActorUnavailableError, RayActorError))


def _engine_error(exc: BaseException, sent: bool) -> MineStreamError:
    """A Ray failure as the protocol's error: the replica's own error when it raised one."""
    from ray.exceptions import RayTaskError

    if isinstance(exc, RayTaskError) and isinstance(exc.cause, MineStreamError):
        cause = exc.cause
        return type(cause)(cause.message)
    if _replica_lost(exc):
        if sent:
            return EngineError("the engine replica serving this utterance died mid-stream; the rest of it is lost (try again)")
        return Unavailable("the engine replicas died before answering; Serve is replacing them (try again)")
    return EngineError(f"the engine replica failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
