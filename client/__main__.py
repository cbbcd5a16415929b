"""``python -m client``: speak, clone and list voices from the command line.

    python -m client say "Hello there." --design "a warm narrator" -o out.wav
    python -m client clone me.wav --name Me --ref-text "what I said"
    python -m client voices
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mimetypes
import os
import sys
import wave
from pathlib import Path
from typing import Any

from . import Client, ServerError, ssl_context


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m client", description="MineStream protocol v1 client.")
    parser.add_argument("--url", default=os.environ.get("MINESTREAM_URL", "wss://localhost:8443/v1/stream"))
    parser.add_argument("--token", default=os.environ.get("MINESTREAM_TOKEN"))
    parser.add_argument("--ca", type=Path, default=Path("certs/ca.pem"), help="CA certificate to trust (default certs/ca.pem)")
    parser.add_argument("--insecure", action="store_true", help="do not verify the server's certificate")
    commands = parser.add_subparsers(dest="command", required=True)
    say = commands.add_parser("say", help="speak text and write a WAV file")
    say.add_argument("text")
    voice = say.add_mutually_exclusive_group()
    voice.add_argument("--design", help="describe the voice")
    voice.add_argument("--voice-id", help="a saved voice")
    say.add_argument("--language", default="auto")
    say.add_argument("--sample-rate", type=int, default=24000)
    say.add_argument("-o", "--output", type=Path, default=Path("out.wav"))
    clone = commands.add_parser("clone", help="upload a recording as a new voice")
    clone.add_argument("file", type=Path)
    clone.add_argument("--name")
    clone.add_argument("--ref-text", help="what is said in the recording")
    commands.add_parser("voices", help="list saved voices")
    return parser


async def _connect(args: argparse.Namespace, **options: Any) -> Client:
    ca = args.ca if args.ca.exists() else None
    context = ssl_context(ca, insecure=args.insecure) if args.url.startswith("wss:") else None
    return await Client.connect(args.url, token=args.token, ssl=context, **options)


async def _say(args: argparse.Namespace) -> None:
    async with await _connect(args, sample_rate=args.sample_rate) as client:
        design = args.design if args.design or args.voice_id else "a clear, neutral voice"
        speech = await client.say(args.text, design=design, voice_id=args.voice_id, language=args.language)
        with wave.open(str(args.output), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(client.sample_rate)
            out.writeframes(b"".join(chunk.data for chunk in speech.chunks))
        done = speech.done or {}
        engine = client.ready["engine"]["name"]
        print(
            f"TTFA {speech.ttfa_ms:.0f} ms (server {done.get('ttfa_ms')} ms), "
            f"{done.get('audio_ms', 0) / 1000:.2f} s of audio, RTF {done.get('rtf')}, engine {engine} -> {args.output}"
        )


async def _clone(args: argparse.Namespace) -> None:
    async with await _connect(args) as client:
        mime = mimetypes.guess_type(args.file.name)[0]
        voice = await client.upload_voice(args.file.read_bytes(), name=args.name or args.file.stem, ref_text=args.ref_text, mime=mime)
        print(json.dumps({k: v for k, v in voice.items() if not k.startswith("_")}))


async def _voices(args: argparse.Namespace) -> None:
    import httpx

    base = args.url.replace("wss://", "https://").replace("ws://", "http://").split("/v1/")[0]
    verify: Any = False if args.insecure else ssl_context(args.ca if args.ca.exists() else None)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    async with httpx.AsyncClient(verify=verify, headers=headers) as http:
        response = await http.get(f"{base}/v1/voices")
        response.raise_for_status()
        for voice in response.json()["voices"]:
            print(f"{voice['id']}  {voice['kind']:6}  {voice['name']}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = {"say": _say, "clone": _clone, "voices": _voices}[args.command]
    try:
        asyncio.run(command(args))
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
