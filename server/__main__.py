"""``python -m server``: start MineStream over TLS."""

from __future__ import annotations

import argparse
import ipaddress
import logging
from pathlib import Path

import uvicorn

from .app import create_app
from .auth import load_or_create_token
from .config import Limits, Settings, is_loopback
from .tls import ensure_certificates, machine_names


def parse_args(argv: list[str] | None = None) -> tuple[Settings, str]:
    parser = argparse.ArgumentParser(prog="python -m server", description="MineStream: real-time streaming text-to-speech over TLS.")
    add = parser.add_argument
    add("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0; a token is required unless loopback)")
    add("--port", type=int, default=8443, help="port for https, wss and the page (default 8443)")
    add("--data-dir", type=Path, default=Path("data"), help="voice library and token (default ./data)")
    add("--certs-dir", type=Path, default=Path("certs"), help="generated CA and certificate (default ./certs)")
    add("--cert", type=Path, help="your own certificate chain (PEM) instead of the generated one")
    add("--key", type=Path, help="the private key for --cert")
    add("--engine", choices=("auto", "preview", "qwen"), default="auto", help="auto: Qwen3-TTS when its weights and a GPU are found, else preview")
    add("--design-model", default=Settings.design_model, help="VoiceDesign model: hub id or local directory")
    add("--base-model", default=Settings.base_model, help="Base (clone) model: hub id or local directory")
    add("--qwen-decode", choices=("auto", "graphs", "eager"), default="auto", help="auto: the batched step as CUDA graphs on a GPU")
    add("--preview-workers", type=int, help="preview engine worker threads (default: one per core, at most 4)")
    add("--preview-threads", type=int, default=Settings.preview_threads, help="threads per preview worker (default 2)")
    add("--token", help="require this token (default: one generated in the data dir when not on loopback)")
    add("--allow-origin", action="append", default=[], help="extra browser Origin allowed to open the socket (repeatable)")
    add("--ice-host", action="append", default=[], help="WebRTC: only offer host candidates on this address (repeatable)")
    add("--ice-server", action="append", default=[], help="WebRTC: STUN/TURN server URL (repeatable; none by default)")
    add("--rtc-connect-timeout", type=float, default=Settings.rtc_connect_timeout_s, help="WebRTC: seconds a peer may take to connect")
    add("--max-text-chars", type=int, default=Limits.max_text_chars)
    add("--max-ref-seconds", type=float, default=Limits.max_ref_seconds)
    add("--max-open-utterances", type=int, default=Limits.max_open_utterances)
    add("--max-message-bytes", type=int, default=Limits.max_message_bytes)
    add("--max-sessions", type=int, default=Limits.max_sessions)
    add("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    args = parser.parse_args(argv)
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together")
    for address in args.ice_host:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            parser.error(f"--ice-host {address!r} is not an IP address")
    limits = Limits(args.max_text_chars, args.max_ref_seconds, args.max_open_utterances, args.max_message_bytes, args.max_sessions)
    return Settings(
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
        preview_workers=args.preview_workers,
        preview_threads=args.preview_threads,
        token=args.token,
        allowed_origins=tuple(args.allow_origin),
        ice_hosts=tuple(args.ice_host),
        ice_servers=tuple(args.ice_server),
        rtc_connect_timeout_s=args.rtc_connect_timeout,
        limits=limits,
    ), args.log_level


def urls(settings: Settings, token: str | None) -> list[str]:
    if is_loopback(settings.host) or settings.host not in ("0.0.0.0", "::"):
        hosts = ["localhost" if is_loopback(settings.host) else settings.host]
    else:
        dns, ips = machine_names()
        hosts = ["localhost"] + [ip for ip in ips if not is_loopback(ip) and ":" not in ip]
    query = f"/?token={token}" if token else "/"
    return [f"https://{host}:{settings.port}{query}" for host in hosts]


def main(argv: list[str] | None = None) -> None:
    settings, log_level = parse_args(argv)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.cert is not None and settings.key is not None:
        cert, key = settings.cert, settings.key
    else:
        cert, key = ensure_certificates(settings.certs_dir)
    token = settings.token
    if token is None and settings.token_required:
        token = load_or_create_token(settings.data_dir)
    print("MineStream is starting; open:", *urls(settings, token), sep="\n  ", flush=True)
    if settings.cert is None:
        print(f"  (phones: trust the CA at https://<this machine>:{settings.port}/ca.pem first)", flush=True)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        # Frames up to twice the protocol limit reach the session and get a
        # clear too_large error; beyond that the socket layer closes with 1009.
        ws_max_size=2 * settings.limits.max_message_bytes + 65536,
        log_level=log_level,
        lifespan="on",
        # A browser keeps idle TLS connections open; don't wait on them to stop.
        timeout_graceful_shutdown=3,
    )


if __name__ == "__main__":
    main()
