"""``python -m server``: start MineStream (over TLS unless it sits behind a TLS proxy).

Every option can also come from the environment: ``--max-sessions 64`` is
``MINESTREAM_MAX_SESSIONS=64``; options that repeat take a comma-separated
list there. The token can come from ``--token-file`` (or
``MINESTREAM_TOKEN``), so it need not show in ``ps``.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .auth import load_or_create_token
from .config import Limits, Settings, is_loopback
from .runner import configure_logging, exit_after_shutdown, serve
from .tls import ensure_certificates, machine_names

log = logging.getLogger("minestream")
ENV_PREFIX = "MINESTREAM_"


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


class _Options:
    """argparse with each option's default taken from its ``MINESTREAM_*`` variable when set."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser
        self._appends: dict[str, list[Any]] = {}

    def add(self, flag: str, *, default: Any = None, type: Callable[[str], Any] = str, help: str, **kwargs: Any) -> None:
        name = env_name(flag)
        raw = os.environ.get(name)
        if raw is not None:
            default = self._from_env(raw, type, kwargs)
        if kwargs.get("action") == "append":
            kwargs.setdefault("default", None)
            self._appends[flag] = default or []
        else:
            kwargs["default"] = default
        if kwargs.get("action") not in ("store_true", "append"):
            kwargs["type"] = type
        self.parser.add_argument(flag, help=f"{help} [{name}]", **kwargs)

    @staticmethod
    def _from_env(raw: str, type: Callable[[str], Any], kwargs: dict[str, Any]) -> Any:
        if kwargs.get("action") == "store_true":
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if kwargs.get("action") == "append":
            return [type(item.strip()) for item in raw.split(",") if item.strip()]
        return type(raw)

    def parse(self, argv: list[str] | None) -> argparse.Namespace:
        args = self.parser.parse_args(argv)
        for flag, default in self._appends.items():
            dest = flag.lstrip("-").replace("-", "_")
            if getattr(args, dest) is None:
                setattr(args, dest, list(default))
        return args


def _parser() -> _Options:
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="MineStream: real-time streaming text-to-speech over TLS. Every option also reads MINESTREAM_<OPTION>.",
    )
    options = _Options(parser)
    add = options.add
    add("--host", default="0.0.0.0", help="address to bind (a token is required unless loopback)")
    add("--port", type=int, default=8443, help="port for https, wss and the page")
    add("--data-dir", type=Path, default=Path("data"), help="voice library and token")
    add("--certs-dir", type=Path, default=Path("certs"), help="generated CA and certificate")
    add("--cert", type=Path, help="your own certificate chain (PEM) instead of the generated one")
    add("--key", type=Path, help="the private key for --cert")
    add("--no-tls", action="store_true", help="serve plain HTTP: only on loopback, or with --behind-proxy")
    add("--behind-proxy", action="store_true", help="a TLS-terminating proxy forwards to this server (trusts its X-Forwarded-* headers)")
    add(
        "--engine",
        choices=("auto", "preview", "qwen", "ray", "openai"),
        default="auto",
        help="auto: Qwen3-TTS when its weights and a GPU are found, else preview; ray: replicas on Ray Serve "
        "(python -m server.cluster); openai: any OpenAI-compatible speech server",
    )
    add("--design-model", default=Settings.design_model, help="VoiceDesign model: hub id or local directory")
    add("--base-model", default=Settings.base_model, help="Base (clone) model: hub id or local directory")
    add("--qwen-decode", choices=("auto", "graphs", "eager"), default="auto", help="auto: the batched step as CUDA graphs on a GPU")
    add("--qwen-predictor", choices=("folded", "compiled", "eager"), default="folded",
        help="the code predictor over folded weights, the same under torch.compile (compiles at start), or upstream's modules (the reference)")
    add("--qwen-talker", choices=("modules", "compiled"), default="modules", help="the talker step as upstream's modules, or under torch.compile")
    add("--preview-workers", type=int, help="preview engine worker threads (default: one per core, at most 4)")
    add("--preview-threads", type=int, default=Settings.preview_threads, help="threads per preview worker")
    add("--database-url", help="voice library database, e.g. postgresql+asyncpg://user:pass@host/db (default: SQLite in the data dir)")
    add("--ray-address", help="--engine ray: the Ray cluster (auto, HOST:PORT or ray://HOST:10001)")
    add("--ray-app", default=Settings.ray_app, help="--engine ray: the Serve application name")
    add("--engine-url", help="--engine openai: base URL of the server (https://host:port; /v1/audio/speech is added)")
    add("--engine-key", help="--engine openai: its API key or token, sent as a Bearer header")
    add("--engine-ca", type=Path, help="--engine openai: CA file to trust for its certificate")
    add("--engine-model", help="--engine openai: the 'model' field (default: the remote's own)")
    add("--engine-voice", default=Settings.engine_voice, help="--engine openai: the 'voice' field sent with designs")
    add("--token", help="require this token (visible in ps: prefer --token-file or the environment)")
    add("--token-file", type=Path, help="read the token from this file")
    add("--allow-origin", action="append", help="extra browser Origin allowed to use the API and the socket (repeatable; CORS)")
    add("--ice-host", action="append", help="WebRTC: only offer host candidates on this address (repeatable)")
    add("--ice-server", action="append", help="WebRTC: STUN/TURN server URL (repeatable; none by default)")
    add("--rtc-connect-timeout", type=float, default=Settings.rtc_connect_timeout_s, help="WebRTC: seconds a peer may take to connect")
    add("--drain-timeout", type=float, default=Settings.drain_timeout_s, help="on SIGTERM, seconds utterances in flight may take to finish")
    for name, value in Limits().__dict__.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            add("--" + name.replace("_", "-"), type=type(value), default=value, help=_LIMIT_HELP.get(name, "limit"))
    add("--log-level", default="info", choices=("debug", "info", "warning", "error"), help="log level")
    return options


_LIMIT_HELP = {
    "max_text_chars": "characters of text per utterance",
    "max_ref_seconds": "seconds of reference audio per cloned voice",
    "max_open_utterances": "utterances one session may have open at once",
    "max_message_bytes": "bytes per protocol message",
    "max_sessions": "sessions (that said hello) at once",
    "max_pending": "connections that have not said hello yet",
    "max_uploads": "reference uploads one session may have open at once",
    "max_audio_s_per_char": "seconds of audio one character may become",
    "max_utterance_audio_s": "seconds of audio one utterance may become",
    "hello_timeout_s": "seconds a new connection has to send hello",
    "idle_timeout_s": "seconds a session with nothing open may stay silent",
    "send_timeout_s": "seconds a client may take to read one frame",
    "request_timeout_s": "seconds a TLS connection may wait before its first request",
}


def parse_args(argv: list[str] | None = None) -> tuple[Settings, argparse.Namespace]:
    options = _parser()
    args = options.parse(argv)
    parser = options.parser
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together")
    if args.no_tls and not (is_loopback(args.host) or args.behind_proxy):
        parser.error("--no-tls off loopback needs --behind-proxy: browsers give microphones and secure sockets only to TLS pages")
    if args.engine == "openai" and not args.engine_url:
        parser.error("--engine openai needs --engine-url")
    if args.engine == "ray" and not args.ray_address:
        parser.error("--engine ray needs --ray-address (auto, HOST:PORT or ray://HOST:10001)")
    for address in args.ice_host:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            parser.error(f"--ice-host {address!r} is not an IP address")
    token = args.token
    if token is None and args.token_file is not None:
        try:
            token = args.token_file.read_text().strip() or None
        except OSError as exc:
            parser.error(f"--token-file: {exc.strerror}: {args.token_file}")
    limits = Limits(**{name: getattr(args, name) for name in Limits().__dict__ if hasattr(args, name)})
    settings = Settings(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        certs_dir=args.certs_dir,
        cert=args.cert,
        key=args.key,
        engine=args.engine,
        design_model=args.design_model,
        base_model=args.base_model,
        qwen_decode=args.qwen_decode,
        qwen_predictor=args.qwen_predictor,
        qwen_talker=args.qwen_talker,
        preview_workers=args.preview_workers,
        preview_threads=args.preview_threads,
        token=token,
        allowed_origins=tuple(args.allow_origin),
        ice_hosts=tuple(args.ice_host),
        ice_servers=tuple(args.ice_server),
        rtc_connect_timeout_s=args.rtc_connect_timeout,
        drain_timeout_s=args.drain_timeout,
        limits=limits,
        database_url=args.database_url,
        engine_url=args.engine_url,
        engine_key=args.engine_key,
        engine_ca=args.engine_ca,
        engine_model=args.engine_model,
        engine_voice=args.engine_voice,
        ray_address=args.ray_address,
        ray_app=args.ray_app,
        tls=not args.no_tls,
        behind_proxy=args.behind_proxy,
    )
    return settings, args


def urls(settings: Settings, token: str | None) -> list[str]:
    if is_loopback(settings.host) or settings.host not in ("0.0.0.0", "::"):
        hosts = ["localhost" if is_loopback(settings.host) else settings.host]
    else:
        dns, ips = machine_names()
        hosts = ["localhost"] + [ip for ip in ips if not is_loopback(ip) and ":" not in ip]
    query = f"/?token={token}" if token else "/"
    scheme = "https" if settings.tls else "http"
    return [f"{scheme}://{host}:{settings.port}{query}" for host in hosts]


def main(argv: list[str] | None = None) -> None:
    settings, args = parse_args(argv)
    configure_logging(args.log_level)
    cert = key = None
    if settings.tls:
        if settings.cert is not None and settings.key is not None:
            cert, key = settings.cert, settings.key
        else:
            cert, key = ensure_certificates(settings.certs_dir)
    token = settings.token
    if token is None and settings.token_required:
        token = load_or_create_token(settings.data_dir)
    # The one place the token is shown: the person starting the server needs the URL.
    print("MineStream is starting; open:", *urls(settings, token), sep="\n  ", flush=True)
    if settings.tls and settings.cert is None:
        print(f"  (phones: trust the CA at https://<this machine>:{settings.port}/ca.pem first)", flush=True)
    serve(settings, None if cert is None else str(cert), None if key is None else str(key), args.log_level)


if __name__ == "__main__":
    main()
    exit_after_shutdown()
