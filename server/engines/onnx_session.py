"""ONNX Runtime sessions that keep their optimised graph on disk.

Creating a session optimises the model's graph first, and for the preview voice
that is three quarters of the load (0.75 s of 0.95 s on one core), paid by
every worker of every start. ONNX Runtime can save the graph it optimised;
loaded again with optimisation off, the session is the same one and starts in
a fifth of the time. The saved graph may hold layouts chosen for this CPU
(ONNX Runtime says so), so its name carries the runtime's version and the CPU's
model and flags besides the model's own identity; another machine, or another
runtime, makes its own.

The cache is a convenience, never a requirement: a directory that cannot be
written, or a cached file that will not load, means the model is optimised as
usual (and a broken file is replaced).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("minestream.engines.onnx")


def default_cache_dir() -> Path:
    """``$MINESTREAM_MODEL_CACHE``, else ``$XDG_CACHE_HOME/minestream``, else ``~/.cache/minestream``."""
    if explicit := os.environ.get("MINESTREAM_MODEL_CACHE"):
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minestream"


def cpu_signature() -> str:
    """What an optimised graph may depend on: the machine, and on Linux the CPU's model and flags."""
    parts = [platform.machine(), platform.processor()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            parts += [line for line in cpuinfo.read(16_384).splitlines() if line.startswith(("model name", "flags"))][:2]
    except OSError:
        pass
    return "\n".join(parts)


def cache_path(model: Path, cache_dir: Path) -> Path:
    import onnxruntime

    stat = model.stat()
    identity = f"{model.resolve()}\n{stat.st_size}\n{stat.st_mtime_ns}\n{onnxruntime.__version__}\n{cpu_signature()}"
    return cache_dir / f"{model.stem}.{hashlib.sha256(identity.encode()).hexdigest()[:16]}.ort.onnx"


def cached_session(model: Path, options: Callable[[], Any], cache_dir: Path | None) -> Any:
    """An ``InferenceSession`` of ``model`` on the CPU; ``options()`` makes fresh ``SessionOptions``."""
    if cache_dir is None:
        return _session(model, options())
    cached = cache_path(model, cache_dir)
    if cached.exists():
        session = _load_optimised(cached, options)
        if session is not None:
            return session
    return _optimise_and_keep(model, options, cached)


def _session(path: Path, options: Any) -> Any:
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _load_optimised(cached: Path, options: Callable[[], Any]) -> Any:
    import onnxruntime

    loading = options()
    loading.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL  # done once, already
    try:
        return _session(cached, loading)
    except Exception as exc:  # noqa: BLE001 - any failure: optimise from the model again
        log.warning("the cached graph %s did not load (%s); optimising the model again", cached, exc)
        return None


def _optimise_and_keep(model: Path, options: Callable[[], Any], cached: Path) -> Any:
    partial = cached.with_name(f"{cached.name}.{secrets.token_hex(4)}.partial")
    saving = options()
    saving.optimized_model_filepath = str(partial)
    saving.log_severity_level = 3  # its one warning is the CPU-specific layout the file name accounts for
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        session = _session(model, saving)
    except Exception as exc:  # noqa: BLE001 - a directory that cannot be made or a full disk: no cache
        log.info("could not keep the optimised graph of %s in %s (%s)", model.name, cached.parent, exc)
        with contextlib.suppress(OSError):
            partial.unlink()
        return _session(model, options())
    _publish(partial, cached, model.stem)
    return session


def _publish(partial: Path, cached: Path, stem: str) -> None:
    """Move the saved graph into place in one step: servers starting together never read half a file."""
    try:
        os.replace(partial, cached)
    except OSError as exc:
        log.info("could not keep the optimised graph at %s (%s)", cached, exc)
        with contextlib.suppress(OSError):
            partial.unlink()
        return
    for stale in cached.parent.glob(f"{stem}.*.ort.onnx"):
        if stale != cached:  # the same model for another runtime or build: replaced by this one
            stale.unlink(missing_ok=True)
