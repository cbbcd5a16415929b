"""``python -m server.wyoming``: MineStream for Home Assistant, as a Wyoming TTS server.

    python -m server.wyoming --url wss://localhost:8443/v1/stream --token-file data/token --zeroconf

A bridge: it serves Wyoming over TCP (port 10200) and speaks to a running
MineStream server over protocol v1, so Home Assistant shares the one engine
(and its scheduler, limits and voice library) with every other client, and
the bridge can run beside the server or anywhere that reaches it. Sessions
are pooled (``client.integrations.pool``): after the first, a request costs
no handshake.

- ``describe`` → ``info``: one TTS program whose voices are a designed voice
  (``--design``) and every voice in the server's library (id as the name,
  the library's name as the description), in the languages the engine speaks,
  with ``supports_synthesize_streaming``.
- ``synthesize`` → ``audio-start``, ``audio-chunk``…, ``audio-stop``.
- ``synthesize-start``, ``synthesize-chunk``…, ``synthesize-stop`` → the text
  goes to the server as it comes; each piece the server speaks (a sentence,
  or part of a long one) is answered with its own ``audio-start``,
  ``audio-chunk``…, ``audio-stop`` as it is generated, then
  ``synthesize-stopped``. The ``synthesize`` Home Assistant also sends within
  a stream (for servers without streaming) is ignored.

A failure is an ``error`` event with the protocol's code; a stream still ends
with ``synthesize-stopped``. ``--zeroconf`` announces ``_wyoming._tcp.local.``
for Home Assistant's discovery.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass, field
from functools import partial

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.server import AsyncEventHandler, AsyncServer
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped, SynthesizeVoice
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from client import Client, MineStreamError, ServerError, Speech, Voice, VoiceLibrary
from client.cli import options as server_options
from client.integrations.pool import SessionPool
from client.messages import AudioChunk as SpeechAudio
from client.messages import Segment
from client.tls import ssl_context

log = logging.getLogger("minestream.wyoming")

DEFAULT_URI = "tcp://0.0.0.0:10200"
DEFAULT_DESIGN = "a clear, neutral voice"
DESIGNED_VOICE = "design"
"""The Wyoming voice name of the ``--design`` voice."""
ATTRIBUTION = Attribution(name="MineStream", url="")
SAMPLE_WIDTH = 2  # pcm_s16le
ZEROCONF_TYPE = "_wyoming._tcp.local."


@dataclass
class Bridge:
    """What every Wyoming connection shares: the sessions, the library, the voice list."""

    pool: SessionPool
    library: VoiceLibrary
    design: str = DEFAULT_DESIGN
    sample_rate: int = 24000
    languages: list[str] = field(default_factory=list)
    voices: list[Voice] = field(default_factory=list)
    """The library as last read: ``describe`` answers with it when the server cannot be reached."""

    async def info(self) -> Info:
        await self._refresh()
        languages = self.languages or ["en"]
        designed = TtsVoice(name=DESIGNED_VOICE, description=f"Designed: {self.design}", attribution=ATTRIBUTION,
                            installed=True, version=None, languages=languages)  # fmt: skip
        saved = [
            TtsVoice(name=v.id, description=v.name or v.id, attribution=ATTRIBUTION, installed=True, version=None, languages=languages)
            for v in self.voices
        ]
        program = TtsProgram(
            name="minestream",
            description="MineStream: streaming text-to-speech, designed and cloned voices",
            attribution=ATTRIBUTION,
            installed=True,
            version=_version(),
            voices=[designed, *saved],
            supports_synthesize_streaming=True,
        )
        return Info(tts=[program])

    async def _refresh(self) -> None:
        try:
            client = await self.pool.client()
            self.languages = [code for code in client.ready.engine.languages if code != "auto"]
            self.voices = await self.library.list()
        except MineStreamError as exc:
            log.warning("describe: the MineStream server did not answer (%s); the last known voices are listed", exc)

    def speak_options(self, voice: SynthesizeVoice | None) -> dict[str, str]:
        """The ``speak`` voice and language for a Wyoming voice: a saved voice by id or name, else the design."""
        options: dict[str, str] = {"language": _language(voice.language if voice else None)}
        name = voice.name if voice else None
        if name and name != DESIGNED_VOICE:
            by_name = [v.id for v in self.voices if v.name == name]
            options["voice_id"] = name if name.startswith("v_") or not by_name else by_name[0]
        else:
            options["design"] = self.design
        return options


def _language(code: str | None) -> str:
    """Wyoming's ``en_US`` is the protocol's ``en-US``; none is ``auto``."""
    return code.replace("_", "-") if code else "auto"


def _version() -> str | None:
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        return version("minestream")
    return None


class Handler(AsyncEventHandler):
    """One Wyoming connection (Home Assistant opens one per request)."""

    def __init__(self, bridge: Bridge, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.bridge = bridge
        self._speech: Speech | None = None
        """The streamed utterance, between synthesize-start and synthesize-stop."""
        self._pump: asyncio.Task[None] | None = None

    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self.write_event((await self.bridge.info()).event())
        elif Synthesize.is_type(event.type):
            if self._pump is None:  # within a stream it only repeats the text, for servers without streaming
                await self._synthesize(Synthesize.from_event(event))
        elif SynthesizeStart.is_type(event.type):
            await self._start(SynthesizeStart.from_event(event))
        elif SynthesizeChunk.is_type(event.type):
            await self._chunk(SynthesizeChunk.from_event(event))
        elif SynthesizeStop.is_type(event.type):
            await self._stop()
        return True

    async def disconnect(self) -> None:
        """The client went away: what it was streaming is cancelled on the server."""
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)

    # --- one request -------------------------------------------------------------

    async def _synthesize(self, request: Synthesize) -> None:
        try:
            _, speech = await self.bridge.pool.speak(request.text, **self.bridge.speak_options(request.voice))
        except MineStreamError as exc:
            await self._error(exc)
            return
        try:
            await self._audio_start()
            async for chunk in speech:
                await self._audio(chunk.data)
            await self.write_event(AudioStop().event())
        except MineStreamError as exc:
            await self._error(exc)
        finally:
            _cancel_unfinished(speech)

    # --- a stream: each piece its own audio-start ... audio-stop -----------------------

    async def _start(self, start: SynthesizeStart) -> None:
        await self.disconnect()  # a new stream replaces one left unfinished
        try:
            _, self._speech = await self.bridge.pool.speak("", final=False, **self.bridge.speak_options(start.voice))
        except MineStreamError as exc:
            self._speech = None
            await self._error(exc)
        self._pump = asyncio.create_task(self._play(self._speech), name="minestream-wyoming-stream")

    async def _chunk(self, chunk: SynthesizeChunk) -> None:
        if self._speech is not None and chunk.text:
            try:
                await self._speech.send(chunk.text)
            except MineStreamError as exc:
                await self._error(exc)

    async def _stop(self) -> None:
        if self._speech is not None:
            with contextlib.suppress(MineStreamError):  # the pump reports what went wrong
                await self._speech.end()
        if self._pump is not None:
            await self._pump
        self._speech = self._pump = None
        await self.write_event(SynthesizeStopped().event())

    async def _play(self, speech: Speech | None) -> None:
        if speech is None:
            return
        in_piece = False
        try:
            async for event in speech.events():
                if isinstance(event, Segment):
                    if in_piece:
                        await self.write_event(AudioStop().event())
                    await self._audio_start()
                    in_piece = True
                elif isinstance(event, SpeechAudio):
                    await self._audio(event.data)
            if in_piece:
                await self.write_event(AudioStop().event())
        except MineStreamError as exc:
            await self._error(exc)
        finally:
            _cancel_unfinished(speech)

    async def _audio_start(self) -> None:
        await self.write_event(AudioStart(rate=self.bridge.sample_rate, width=SAMPLE_WIDTH, channels=1).event())

    async def _audio(self, pcm: bytes) -> None:
        await self.write_event(AudioChunk(rate=self.bridge.sample_rate, width=SAMPLE_WIDTH, channels=1, audio=pcm).event())

    async def _error(self, exc: MineStreamError) -> None:
        code = exc.code if isinstance(exc, ServerError) else type(exc).__name__
        log.warning("synthesis failed: %s", exc)
        with contextlib.suppress(ConnectionError):
            await self.write_event(Error(text=f"MineStream: {exc}", code=code).event())


def _cancel_unfinished(speech: Speech) -> None:
    """Home Assistant went away (or a write failed) before the end: the server stops generating."""
    if speech.done is None:
        speech.cancel_soon()


# --- zeroconf ------------------------------------------------------------------------


async def announce(port: int, name: str, host: str) -> contextlib.AsyncExitStack:
    """Register ``NAME._wyoming._tcp.local.`` for Home Assistant's discovery; closing the stack withdraws it."""
    zeroconf = AsyncZeroconf(interfaces=[host])
    info = service_info(port, name, host)
    await zeroconf.async_register_service(info)
    stack = contextlib.AsyncExitStack()
    stack.push_async_callback(zeroconf.async_close)
    stack.push_async_callback(zeroconf.async_unregister_service, info)
    log.info("zeroconf: announced %s on %s:%d", info.name, host, port)
    return stack


def service_info(port: int, name: str, host: str) -> AsyncServiceInfo:
    """What Home Assistant's Wyoming integration looks for: ``_wyoming._tcp.local.``, this host and port."""
    return AsyncServiceInfo(ZEROCONF_TYPE, f"{name}.{ZEROCONF_TYPE}", addresses=[socket.inet_aton(host)], port=port)


def lan_address() -> str:
    """The address other machines reach this one at (the route to the mDNS group; nothing is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("224.0.0.251", 5353))
        return str(probe.getsockname()[0])


# --- the command -----------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m server.wyoming", description="MineStream for Home Assistant: a Wyoming TTS server.")
    parser.add_argument("--uri", default=DEFAULT_URI, help=f"where to serve Wyoming (default {DEFAULT_URI}; unix:// or stdio:// too)")
    parser.add_argument("--design", default=DEFAULT_DESIGN, help=f"the designed voice offered besides the library (default {DEFAULT_DESIGN!r})")
    parser.add_argument("--sample-rate", type=int, default=24000, choices=(16000, 22050, 24000, 44100, 48000), help="audio rate (default 24000)")
    parser.add_argument("--zeroconf", nargs="?", const="minestream", metavar="NAME", help="announce NAME._wyoming._tcp.local. (default name minestream)")
    parser.add_argument("--zeroconf-host", metavar="IP", help="the address to announce (default: this machine's LAN address)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    server_options.add_server_options(parser, top=True)
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    token, ca = server_options.token(args), server_options.ca(args)
    context = ssl_context(ca, insecure=args.insecure) if args.url.startswith("wss:") else None
    timeouts = server_options.timeouts(args)

    async def connect() -> Client:
        return await Client.connect(args.url, token=token, ssl=context, sample_rate=args.sample_rate, segments=True, timeouts=timeouts)

    pool = SessionPool(connect)
    library = VoiceLibrary.at(args.url, token=token, ca=ca, insecure=args.insecure, timeout=args.request_timeout)
    bridge = Bridge(pool, library, design=args.design, sample_rate=args.sample_rate)
    server = AsyncServer.from_uri(args.uri)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(pool.aclose)
        stack.push_async_callback(library.close)
        await bridge.info()  # the first session and the voice list, before the first request
        if args.zeroconf:
            port = int(args.uri.rsplit(":", 1)[1])
            await stack.enter_async_context(await announce(port, args.zeroconf, args.zeroconf_host or lan_address()))
        log.info("serving Wyoming at %s for %s (%d voices)", args.uri, args.url, len(bridge.voices) + 1)
        await server.run(partial(Handler, bridge))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
