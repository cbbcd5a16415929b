"""``minestream`` (also ``python -m client``): speak, clone and manage voices; run the server or the benchmark.

    minestream serve --port 8443                         # the server (python -m server's options)
    minestream say "Hello there." --design "a warm narrator" -o hello.wav
    echo "From a pipe." | minestream say - -o - | aplay  # stdin in, WAV out on stdout
    minestream say "Out loud." --play
    minestream clone me.wav --name Me --ref-text "what I said"
    minestream voices                                    # list; also show, rename, delete, audio
    minestream bench --preset core                       # python -m bench's options

Failures end with one line on stderr and an exit code (``exits.Exit``); no
traceback for anything the server or the network did.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Awaitable, Callable
from importlib import metadata
from pathlib import Path

from ..timeouts import within
from . import options, say, voices
from .exits import EXIT_CODES_HELP, Exit, explain

DELEGATED = {"serve": "run the server (minestream serve --help lists its options)",
             "bench": "run the benchmark (minestream bench --help lists its options)"}


def version() -> str:
    """The installed package's version; a source checkout's pyproject.toml; else "unknown"."""
    try:
        return metadata.version("minestream")
    except metadata.PackageNotFoundError:
        pass
    try:
        import tomllib

        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])
    except (ImportError, OSError, KeyError, ValueError):
        return "unknown"


def parser(prog: str) -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog=prog, description="MineStream: real-time streaming text-to-speech.", epilog=EXIT_CODES_HELP)
    top.add_argument("--version", action="version", version=f"minestream {version()}", help="print the version and exit")
    options.add_server_options(top, top=True)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("serve", help=DELEGATED["serve"], add_help=False)
    say.add_parser(commands)
    voices.add_parsers(commands)
    commands.add_parser("bench", help=DELEGATED["bench"], add_help=False)
    for command in commands.choices.values():
        command.epilog = EXIT_CODES_HELP
    return top


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        return _delegate(argv[0], argv[1:])
    top = parser(_prog())
    args, unknown = top.parse_known_args(argv)
    if args.command in DELEGATED:  # reached only with options before it, which are not its own
        top.error(f"{args.command} takes its own options: minestream {args.command} [its options] (see minestream {args.command} --help)")
    if unknown:
        top.error(f"unrecognized arguments: {' '.join(unknown)}")
    options.check_url(top, args.url)
    try:
        if hasattr(args, "prepare"):
            args.prepare(args, top)
        asyncio.run(_bounded(args.run(args), args.timeout))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return Exit.INTERRUPTED
    except BrokenPipeError:
        # The reader of stdout went away (| head): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return Exit.OK
    except Exception as exc:  # explain() re-raises what is a bug of ours, traceback and all
        code, message = explain(exc)
        print(f"error: {message}", file=sys.stderr)
        return code
    return Exit.OK


async def _bounded(command: Awaitable[None], seconds: float | None) -> None:
    await within(seconds, command, "overall", "the whole command (--timeout)")


def _delegate(command: str, argv: list[str]) -> int:
    # Imported by name: the benchmark's dependencies load only for ``bench``.
    package = {"serve": "server", "bench": "bench"}[command]
    run: Callable[[list[str]], int | None] = importlib.import_module(f"{package}.__main__").main
    return run(argv) or 0


def _prog() -> str:
    return "python -m client" if Path(sys.argv[0]).name == "__main__.py" else "minestream"
