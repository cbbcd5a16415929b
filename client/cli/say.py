"""``minestream say``: text in, speech out (a WAV file, stdout, the speakers).

The audio is written as it arrives: to a temporary file beside the output,
renamed into place once the utterance is complete (a failed run leaves no
half file), or straight to stdout with ``-o -`` so a player downstream
starts at once. A summary line (TTFA, audio length, RTF) follows on stdout,
or on stderr when stdout carries the audio.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

from ..connection import Client
from ..speech import Speech
from ..wav import WavWriter
from . import options
from .exits import LocalError
from .play import Player, find_player
from .progress import ProgressLine

DEFAULT_DESIGN = "a clear, neutral voice"
DEFAULT_OUTPUT = Path("out.wav")


def add_parser(commands: Any) -> None:
    say = commands.add_parser("say", help="speak text; write a WAV file, stdout or the speakers",
                              description="Speak TEXT (or stdin with -) in a designed or saved voice.")
    say.add_argument("text", nargs="+", metavar="TEXT", help="what to say (several words are joined by spaces; - reads stdin)")
    voice = say.add_argument_group("voice (one of)").add_mutually_exclusive_group()
    voice.add_argument("--design", metavar="DESCRIPTION", help=f"describe the voice (default {DEFAULT_DESIGN!r})")
    voice.add_argument("--voice", metavar="NAME_OR_ID", help="a saved voice, by name or id (minestream voices lists them)")
    voice.add_argument("--voice-id", metavar="ID", help="a saved voice by id (no lookup)")
    say.add_argument("--language", default="auto", help="the text's language, e.g. en, zh, de (default auto)")
    say.add_argument("--sample-rate", type=int, default=24000, metavar="HZ", help="24000 (default), 16000, 22050, 44100 or 48000")
    out = say.add_argument_group("output")
    out.add_argument("-o", "--output", metavar="FILE",
                     help=f"write a 16-bit mono WAV here; - for stdout (default {DEFAULT_OUTPUT}, or none with --play)")
    out.add_argument("--play", action="store_true", help="play it on this machine's speakers as it arrives")
    out.add_argument("--player", metavar="COMMAND", help="with --play: a program that plays WAV from stdin (default: paplay, aplay, ffplay or afplay)")
    out.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="a progress line on stderr (default: when stderr is a terminal)")
    out.add_argument("-q", "--quiet", action="store_true", help="no summary line")
    options.add_server_options(say, top=False)
    say.set_defaults(run=run, prepare=prepare)


def prepare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """What can fail before connecting: the text, the output's place, the player."""
    args.text = _text(args.text, parser)
    if args.output == "-" and sys.stdout.isatty():
        parser.error("-o -: refusing to write audio to a terminal; pipe it (| aplay) or redirect it (> out.wav)")
    if args.output is None and not args.play:
        args.output = str(DEFAULT_OUTPUT)
    args.player_command = find_player(args.sample_rate, args.player) if args.play else None


async def run(args: argparse.Namespace) -> None:
    with _Output(args.output) as sink:
        async with options.connect(args, sample_rate=args.sample_rate) as client:
            design, voice_id = await _voice(args, client)
            speech = await client.speak(args.text, design=design, voice_id=voice_id, language=args.language)
            await _receive(args, client, speech, sink.stream)
            sink.complete()
        if not args.quiet:
            print(_summary(client, speech, args.output), file=sys.stderr if args.output == "-" else sys.stdout, flush=True)


async def _receive(args: argparse.Namespace, client: Client, speech: Speech, stream: IO[bytes] | None) -> None:
    progress = ProgressLine(args.progress)
    writer = WavWriter(stream, client.sample_rate) if stream is not None else None
    player = Player(args.player_command, client.sample_rate) if args.player_command else None
    try:
        async for chunk in speech:
            if writer is not None:
                writer.write(chunk.data)
            if player is not None:
                await player.write(chunk.data)
            progress.update(f"{speech.audio_seconds:.1f} s of audio in {progress.elapsed():.1f} s")
        progress.clear()
        if writer is not None:
            writer.close()
        if player is not None:
            await player.finish()
    except BaseException:
        progress.clear()
        if player is not None:
            player.stop()
        raise


async def _voice(args: argparse.Namespace, client: Client) -> tuple[str | None, str | None]:
    """(design, voice_id): one of them."""
    if args.voice:
        return None, (await client.voices.find(args.voice)).id
    if args.voice_id:
        return None, args.voice_id
    return args.design or DEFAULT_DESIGN, None


def _text(words: list[str], parser: argparse.ArgumentParser) -> str:
    text = sys.stdin.read() if words == ["-"] else " ".join(words)
    if not text.strip():
        parser.error("the text is empty")
    return text


def _summary(client: Client, speech: Speech, output: str | None) -> str:
    done = speech.done
    where = {None: "the speakers", "-": "stdout"}.get(output, output)
    if done is None or speech.ttfa_ms is None:
        return f"no audio came (engine {client.ready.engine.name})"
    server_ttfa = "" if done.ttfa_ms is None else f" (server {done.ttfa_ms:.0f} ms)"
    rtf = "" if done.rtf is None else f", RTF {done.rtf:.2f}"
    return f"TTFA {speech.ttfa_ms:.0f} ms{server_ttfa}, {done.audio_ms / 1000:.2f} s of audio{rtf}, engine {client.ready.engine.name} -> {where}"


class _Output:
    """Where the WAV goes: nowhere, stdout, or a temporary file renamed into place by ``complete``."""

    def __init__(self, output: str | None) -> None:
        self.output = output
        self.stream: IO[bytes] | None = None
        self._temporary: Path | None = None

    def __enter__(self) -> _Output:
        if self.output == "-":
            self.stream = sys.stdout.buffer
        elif self.output is not None:
            self.stream = self._open_temporary(Path(self.output))
        return self

    def _open_temporary(self, path: Path) -> IO[bytes]:
        try:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent if str(path.parent) else ".")
        except OSError as exc:
            raise LocalError(f"cannot write {path}: {exc.strerror}") from None
        self._temporary = Path(name)
        return os.fdopen(fd, "wb")

    def complete(self) -> None:
        if self._temporary is None or self.stream is None:
            return
        self.stream.close()
        self._temporary.chmod(0o644 & ~_umask())
        self._temporary.replace(self.output or "")
        self._temporary = None

    def __exit__(self, *exc: object) -> None:
        if self._temporary is not None:  # not completed: leave nothing behind
            if self.stream is not None:
                self.stream.close()
            with contextlib.suppress(OSError):
                self._temporary.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
