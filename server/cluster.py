"""``python -m server.cluster``: deploy the engine tier on Ray Serve.

Against a running Ray cluster (``--address auto`` on one of its nodes, or
``ray://HEAD:10001``) it deploys the ``minestream`` application, whose
replicas each own one engine (``server/replica.py``), waits until they run,
and then either leaves it to the cluster (``--detach``) or keeps it until
interrupted. Without ``--address`` it starts a small Ray of its own on this
machine (loopback only) for trying things out, the tests and the benchmark.

Fronts then run ``python -m server --engine ray --ray-address ADDRESS``; the
address to give them is printed (and written to ``--address-file``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from .config import Settings

log = logging.getLogger("minestream.cluster")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m server.cluster", description="Deploy MineStream's engine replicas on Ray Serve.")
    add = parser.add_argument
    add("--address", help="the Ray cluster to deploy on (auto, HOST:PORT, ray://HOST:10001); default: start one here, on loopback")
    add("--app", default=Settings.ray_app, help="Serve application name (default minestream; fronts take it as --ray-app)")
    add("--engine", choices=("preview", "qwen"), default="preview", help="the engine each replica owns (qwen: one GPU per replica)")
    add("--replicas", type=int, default=1, help="a fixed number of replicas (default 1)")
    add("--min-replicas", type=int, help="autoscale on ongoing requests from this many replicas (0 allowed)")
    add("--max-replicas", type=int, help="autoscale up to this many replicas")
    add("--max-ongoing", type=int, help="streams routed to one replica at once (default: the engine's capacity)")
    add("--replica-cpus", type=float, default=1.0, help="CPUs Ray reserves per replica (default 1)")
    add("--num-cpus", type=int, help="a local Ray only: CPUs it offers (default: this machine's)")
    add("--data-dir", type=Path, default=Path("data"), help="replicas' engine cache (voice-clone prompts) lives under DATA_DIR/cache")
    add("--design-model", default=Settings.design_model)
    add("--base-model", default=Settings.base_model)
    add("--qwen-decode", choices=("auto", "graphs", "eager"), default="auto")
    add("--qwen-predictor", choices=("folded", "compiled", "eager"), default="folded")
    add("--qwen-talker", choices=("modules", "compiled"), default="modules")
    add("--preview-workers", type=int, default=1, help="Piper workers per preview replica (default 1)")
    add("--preview-threads", type=int, default=Settings.preview_threads)
    add("--address-file", type=Path, help="write the address fronts connect to here once the replicas run")
    add("--detach", action="store_true", help="with --address: leave the application running on the cluster and exit")
    add("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    args = parser.parse_args(argv)
    if args.detach and not args.address:
        parser.error("--detach needs --address: a local Ray ends with this command")
    if args.replicas < 1 and args.min_replicas is None:
        parser.error("--replicas must be at least 1 (or autoscale with --min-replicas 0)")
    return args


def engine_settings(args: argparse.Namespace) -> Settings:
    return Settings(
        data_dir=args.data_dir.resolve(),
        engine=args.engine,
        design_model=args.design_model,
        base_model=args.base_model,
        qwen_decode=args.qwen_decode,
        qwen_predictor=args.qwen_predictor,
        qwen_talker=args.qwen_talker,
        preview_workers=args.preview_workers,
        preview_threads=args.preview_threads,
    )


def connect(args: argparse.Namespace) -> str:
    """Join the cluster, or start a local one; the GCS address fronts connect to."""
    if args.address is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray's switch for "loopback only"
    import ray

    options: dict[str, Any] = {"log_to_driver": False, "configure_logging": False, "namespace": "minestream-cluster"}
    if args.address is None:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, **options)
    else:
        from .engines.ray import prepare_environment

        prepare_environment(args.address)
        ray.init(address=args.address, **options)
    return str(ray.get_runtime_context().gcs_address)


def deploy(args: argparse.Namespace) -> None:
    from ray import serve

    from .replica import build_app

    # Fronts reach the replicas through handles; no HTTP proxy is needed.
    serve.start(proxy_location="Disabled")
    app = build_app(
        engine_settings(args),
        replicas=args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        max_ongoing=args.max_ongoing,
        replica_cpus=args.replica_cpus,
    )
    serve.run(app, name=args.app, route_prefix=None)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    address = connect(args)
    import ray
    from ray import serve

    try:
        deploy(args)
        print(f"MineStream engine replicas ({args.engine}) run on Ray at {address}; fronts:", flush=True)
        print(f"  python -m server --engine ray --ray-address {address} --ray-app {args.app}", flush=True)
        if args.address_file is not None:
            tmp = args.address_file.with_suffix(".tmp")
            tmp.write_text(address)
            tmp.replace(args.address_file)
        if args.detach:
            return
        stop.wait()
        if args.address is not None:
            log.info("deleting the %s application", args.app)
            serve.delete(args.app)
    finally:
        # A local Ray goes whole, replicas and all; from a cluster, this driver only disconnects.
        ray.shutdown()


if __name__ == "__main__":
    main()
    sys.exit(0)
