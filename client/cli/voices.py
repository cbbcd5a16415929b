"""``minestream clone`` and ``minestream voices``: the voice library from the command line.

``clone`` streams the recording over the socket (the server decodes it as it
comes and reports progress); ``voices`` lists, shows, renames, deletes and
fetches saved voices over the HTTP API. A voice is named by id or by name.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mimetypes
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..messages import Voice
from . import options
from .exits import LocalError
from .progress import ProgressLine


def add_parsers(commands: Any) -> None:
    clone = commands.add_parser("clone", help="clone a voice from a recording", description="Upload a recording (WAV, FLAC, MP3, "
                                "Ogg/WebM Opus, MP4/AAC; 3-30 s of one person speaking) and save it as a voice.")
    clone.add_argument("file", metavar="FILE", help="the recording; - reads stdin")
    clone.add_argument("--name", help="the voice's name (default: the file's name)")
    clone.add_argument("--ref-text", metavar="TEXT", help="what is said in the recording (helps cloning)")
    clone.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="a progress line on stderr (default: when stderr is a terminal)")
    clone.add_argument("--json", action="store_true", help="print the saved voice as JSON")
    options.add_server_options(clone, top=False)
    clone.set_defaults(run=clone_voice)

    voices = commands.add_parser("voices", help="list, show, rename, delete saved voices",
                                 description="The server's voice library. Without an action: list.")
    voices.add_argument("--json", action="store_true", help="print JSON instead of a table")
    options.add_server_options(voices, top=False)
    voices.set_defaults(run=list_voices)
    actions = voices.add_subparsers(dest="action", metavar="ACTION")
    for name, run, help_text in (("list", list_voices, "list the saved voices (the default)"),
                                 ("show", show_voice, "one voice's details"),
                                 ("rename", rename_voice, "give a voice a new name"),
                                 ("delete", delete_voice, "delete a voice"),
                                 ("audio", voice_audio, "save a voice's reference recording (WAV)")):
        action = actions.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        if name != "list":
            action.add_argument("voice", metavar="VOICE", help="its id or name")
        if name == "rename":
            action.add_argument("name", metavar="NEW_NAME", help="the new name")
        if name == "audio":
            action.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write it; - for stdout")
        action.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON instead of text")
        options.add_server_options(action, top=False)
        action.set_defaults(run=run)


async def clone_voice(args: argparse.Namespace) -> None:
    data, filename = _recording(args.file)
    progress = ProgressLine(args.progress)
    async with options.connect(args) as client:
        try:
            voice = await client.upload_voice(
                data, name=args.name or Path(filename).stem, ref_text=args.ref_text, mime=mimetypes.guess_type(filename)[0],
                on_progress=lambda p: progress.update(f"{p.decoded_ms / 1000:.1f} s of the recording decoded"),
            )
        finally:
            progress.clear()
    _print_voices([voice], args.json, one=True)


async def list_voices(args: argparse.Namespace) -> None:
    async with options.library(args) as library:
        saved = await library.list()
    _print_voices(saved, args.json)
    if not saved and not args.json:
        print("no saved voices", file=sys.stderr)


async def show_voice(args: argparse.Namespace) -> None:
    async with options.library(args) as library:
        _print_voices([await library.find(args.voice)], args.json, one=True, detail=True)


async def rename_voice(args: argparse.Namespace) -> None:
    async with options.library(args) as library:
        voice = await library.find(args.voice)
        _print_voices([await library.rename(voice.id, args.name)], args.json, one=True)


async def delete_voice(args: argparse.Namespace) -> None:
    async with options.library(args) as library:
        voice = await library.find(args.voice)
        await library.delete(voice.id)
    print(f"deleted {voice.id} ({voice.name})", file=sys.stderr)


async def voice_audio(args: argparse.Namespace) -> None:
    async with options.library(args) as library:
        audio = await library.audio((await library.find(args.voice)).id)
    if args.output == "-":
        sys.stdout.buffer.write(audio)
        sys.stdout.buffer.flush()
        return
    try:
        await asyncio.to_thread(Path(args.output).write_bytes, audio)
    except OSError as exc:
        raise LocalError(f"cannot write {args.output}: {exc.strerror}") from None


def _recording(file: str) -> tuple[bytes, str]:
    if file == "-":
        return sys.stdin.buffer.read(), "stdin"
    try:
        return Path(file).read_bytes(), Path(file).name
    except OSError as exc:
        raise LocalError(f"cannot read {file}: {exc.strerror}") from None


def _print_voices(voices: list[Voice], as_json: bool, *, one: bool = False, detail: bool = False) -> None:
    if as_json:
        rows = [{k: v for k, v in asdict(voice).items() if k != "raw"} for voice in voices]
        print(json.dumps(rows[0] if one else rows, ensure_ascii=False))
        return
    for voice in voices:
        print(f"{voice.id}  {voice.kind:6}  {voice.duration_ms / 1000:5.1f} s  {voice.name}")
        if detail:
            for label, value in (("design", voice.design), ("ref_text", voice.ref_text)):
                if value:
                    print(f"  {label}: {value}")
