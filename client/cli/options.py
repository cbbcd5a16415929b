"""The options every command that talks to a server shares: where, which token, whose CA, how long.

They are accepted before the command and after it (``minestream --url U say
hi`` and ``minestream say hi --url U``). Defaults suit the server started by
``./run_tls.sh`` on this machine: ``certs/ca.pem`` is trusted when present,
and ``data/token`` is read for a server on loopback.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..connection import Client, Connecting
from ..library import VoiceLibrary
from ..timeouts import Timeouts
from .exits import LocalError

DEFAULT_URL = "wss://localhost:8443/v1/stream"
DEFAULT_CA = Path("certs/ca.pem")
LOCAL_TOKEN_FILE = Path("data/token")
"""Where the server keeps its token; read only for a server on loopback."""
DEFAULTS = Timeouts()


def seconds(text: str) -> float | None:
    """A --*-timeout value: seconds, 0 for no limit."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a timeout cannot be negative")
    return value or None


def add_server_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """On the top parser (``top``) with the defaults; on each command's without, so they don't override."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    server = parser.add_argument_group("server")
    server.add_argument("--url", default=default(os.environ.get("MINESTREAM_URL", DEFAULT_URL)), metavar="URL",
                        help=f"the server's socket (default $MINESTREAM_URL or {DEFAULT_URL}); ws:// for one without TLS")
    server.add_argument("--token", default=default(None), metavar="TOKEN",
                        help="the server's token (visible in ps: prefer --token-file or $MINESTREAM_TOKEN)")
    server.add_argument("--token-file", type=Path, default=default(None), metavar="FILE",
                        help=f"read the token from FILE (default $MINESTREAM_TOKEN_FILE; {LOCAL_TOKEN_FILE} for a server on loopback)")
    server.add_argument("--ca", type=Path, default=default(None), metavar="FILE",
                        help=f"also trust this CA certificate (default $MINESTREAM_CA, else {DEFAULT_CA} when present)")
    server.add_argument("--insecure", action="store_true", default=default(False),
                        help="do not verify the server's certificate (encrypted, but not authenticated)")
    limits = parser.add_argument_group("timeouts (seconds; 0 for no limit)")
    for flag, value, what in (
        ("--connect-timeout", DEFAULTS.connect, "to connect and get ready"),
        ("--first-audio-timeout", DEFAULTS.first_audio, "from the text to its first audio"),
        ("--idle-timeout", DEFAULTS.idle, "between pieces of audio"),
        ("--upload-timeout", DEFAULTS.upload, "for the server to check a recording"),
        ("--request-timeout", DEFAULTS.request, "for an HTTP call of the voice library"),
    ):
        limits.add_argument(flag, type=seconds, default=default(value), metavar="S", help=f"{what} (default {value:g})")
    limits.add_argument("--timeout", type=seconds, default=default(None), metavar="S",
                        help="for the whole command (default: no overall limit)")


def timeouts(args: argparse.Namespace) -> Timeouts:
    return Timeouts(
        connect=args.connect_timeout,
        ready=args.connect_timeout,
        first_audio=args.first_audio_timeout,
        idle=args.idle_timeout,
        upload=args.upload_timeout,
        request=args.request_timeout,
    )


def token(args: argparse.Namespace) -> str | None:
    if args.token:
        return str(args.token)
    if args.token_file is not None:
        return _read_token(args.token_file)
    if os.environ.get("MINESTREAM_TOKEN"):
        return os.environ["MINESTREAM_TOKEN"]
    if os.environ.get("MINESTREAM_TOKEN_FILE"):
        return _read_token(Path(os.environ["MINESTREAM_TOKEN_FILE"]))
    if _on_loopback(args.url) and LOCAL_TOKEN_FILE.is_file():
        return _read_token(LOCAL_TOKEN_FILE)
    return None  # the server may not need one (loopback), or the URL carries ?token=


def ca(args: argparse.Namespace) -> Path | None:
    chosen = args.ca or (Path(os.environ["MINESTREAM_CA"]) if os.environ.get("MINESTREAM_CA") else None)
    if chosen is not None:
        if not chosen.is_file():
            raise LocalError(f"--ca {chosen}: no such file")
        return chosen
    return DEFAULT_CA if DEFAULT_CA.is_file() else None


def connect(args: argparse.Namespace, **options: Any) -> Connecting:
    return Client.connect(args.url, token=token(args), ca=ca(args), insecure=args.insecure, timeouts=timeouts(args), **options)


def library(args: argparse.Namespace) -> VoiceLibrary:
    return VoiceLibrary.at(args.url, token=token(args), ca=ca(args), insecure=args.insecure, timeout=args.request_timeout)


def check_url(parser: argparse.ArgumentParser, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("wss", "ws") or not parts.hostname:
        parser.error(f"--url {url!r}: expected wss://HOST:PORT/v1/stream (or ws:// without TLS)")


def _read_token(path: Path) -> str:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise LocalError(f"cannot read the token file {path}: {exc.strerror}") from None
    if not value:
        raise LocalError(f"the token file {path} is empty")
    return value


def _on_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
