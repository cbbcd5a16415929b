"""The WebRTC transport: one peer connection per session, built with aiortc.

``POST /v1/rtc/offer`` {sdp, type: "offer", token?} answers with the server's
SDP. The peer connection carries:

* a data channel named ``control`` with protocol v1 frames, exactly as the
  WebSocket carries them (JSON text or msgpack binary), except that audio is
  never sent as ``audio`` messages;
* an outgoing audio track with the generated speech (``rtc_track.SpeechTrack``);
* the incoming audio track (the microphone), always drained, recorded into
  uploads that ``voice_begin`` starts with ``source: "rtc"``.

ICE offers host candidates only unless STUN/TURN servers are configured
(aiortc would otherwise ask Google's STUN server). ``--ice-host`` limits the
host candidates to the given addresses; remote candidates the server could
only reach by leaving those addresses (names that need mDNS, or anything but
loopback when the server is loopback-only) are dropped from the offer.

A peer is closed and freed when its data channel or ICE connection closes,
when it fails, when it does not connect in time, and at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcdatachannel import RTCDataChannel
from aiortc.rtcicetransport import parse_stun_turn_uri
from aiortc.sdp import SessionDescription
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .auth import connection_token, origin_allowed
from .config import Settings
from .errors import BadMessage, Forbidden, MineStreamError, TooLarge, Unauthorized
from .protocol import Frame
from .rtc_track import Microphone, SpeechTrack, TrackSink
from .state import ServerState

log = logging.getLogger("minestream.rtc")

OFFER_MAX_BYTES = 64 * 1024
"""Browsers' offers are 3-8 KB; anything near this is not an offer."""
"""A peer whose control channel is not open by then is dropped."""
CONTROL_LABEL = "control"
MAX_PENDING_FRAMES = 256
CHANNEL_HIGH_WATER = 1 << 20
"""Bytes the data channel may hold unsent before the writer waits for the peer to read."""
"""Data-channel frames waiting for the session; a peer that floods past this is cut."""
FLUSH_TIMEOUT_S = 2.0


def routes() -> list[Route]:
    return [Route("/v1/rtc/offer", offer_endpoint, methods=["POST"])]


async def offer_endpoint(request: Request) -> Response:
    state: ServerState = request.app.state.minestream
    if not origin_allowed(request, state.settings.allowed_origins):
        raise Forbidden("this page's origin may not open sessions on this server")
    body = await _read_offer(request)
    token = body.get("token") if isinstance(body.get("token"), str) else connection_token(request)
    if state.settings.token_required and not state.check_token(token):
        raise Unauthorized("a valid token is required: pass it as 'token' in the offer, ?token= or a Bearer header")
    sdp = _checked_offer(body, state.settings)
    peer = RtcPeer(state, request.app.state.rtc_peers)
    answer = await peer.answer(sdp)
    return JSONResponse({"type": answer.type, "sdp": answer.sdp, "session": peer.session.id})


# --- the offer ------------------------------------------------------------------


async def _read_offer(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > OFFER_MAX_BYTES:
        raise TooLarge(f"an offer is at most {OFFER_MAX_BYTES} bytes")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > OFFER_MAX_BYTES:
            raise TooLarge(f"an offer is at most {OFFER_MAX_BYTES} bytes")
    try:
        body = json.loads(data)
    except ValueError:
        raise BadMessage('the body must be JSON: {"sdp": ..., "type": "offer"}') from None
    if not isinstance(body, dict):
        raise BadMessage('the body must be a JSON object: {"sdp": ..., "type": "offer"}')
    return body


def _checked_offer(body: dict[str, Any], settings: Settings) -> str:
    sdp, kind = body.get("sdp"), body.get("type", "offer")
    if kind != "offer":
        raise BadMessage("'type' must be \"offer\"")
    if not isinstance(sdp, str) or not sdp.strip():
        raise BadMessage("'sdp' must be the offer's SDP text")
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception:  # aiortc's parser raises whatever the bad line provokes
        raise BadMessage("'sdp' is not a valid SDP offer") from None
    kinds = {media.kind for media in parsed.media}
    if "audio" not in kinds:
        raise BadMessage("the offer has no audio: add an audio transceiver (sendrecv)")
    if "application" not in kinds:
        raise BadMessage(f"the offer has no data channel: create one named {CONTROL_LABEL!r} before the offer")
    return filter_candidates(sdp, remote_candidate_filter(settings.ice_hosts))


# --- ICE --------------------------------------------------------------------------

_restricted_to: tuple[str, ...] | None = None


def restrict_host_candidates(addresses: tuple[str, ...] | list[str]) -> None:
    """Gather host candidates on these local addresses only (process-wide, for aioice).

    aioice enumerates every interface and leaves out 127.0.0.1; there is no
    per-connection option, so its one enumeration function is replaced. When
    every address is loopback, connectivity checks from anywhere else are
    ignored too: answering them would make aioice contact that address as a
    peer-reflexive candidate (a browser sends checks from all its interfaces).
    Tests and benchmarks give 127.0.0.1 here and to the server's ``--ice-host``.
    """
    global _restricted_to
    chosen = tuple(str(ipaddress.ip_address(a)) for a in addresses)
    if not chosen or chosen == _restricted_to:
        return

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (use_ipv4 if ipaddress.ip_address(a).version == 4 else use_ipv6)]

    aioice.ice.get_host_addresses = get_host_addresses
    if all(ipaddress.ip_address(a).is_loopback for a in chosen):
        _answer_loopback_only()
    _restricted_to = chosen


def _answer_loopback_only() -> None:
    connection = aioice.ice.Connection
    if getattr(connection.request_received, "loopback_only", False):
        return
    original = connection.request_received

    def request_received(self: Any, message: Any, addr: tuple[str, int], protocol: Any) -> None:
        if _is_loopback(addr[0]):
            original(self, message, addr, protocol)

    request_received.loopback_only = True  # type: ignore[attr-defined]
    connection.request_received = request_received  # type: ignore[method-assign]


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def remote_candidate_filter(ice_hosts: tuple[str, ...]) -> Callable[[str], bool] | None:
    """Which remote candidate addresses to keep; None keeps all (aioice's default)."""
    if not ice_hosts:
        return None
    loopback_only = all(ipaddress.ip_address(a).is_loopback for a in ice_hosts)

    def allowed(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False  # an mDNS name: resolving it would multicast on the LAN
        return ip.is_loopback or not loopback_only

    return allowed


def filter_candidates(sdp: str, allowed: Callable[[str], bool] | None) -> str:
    if allowed is None:
        return sdp
    kept = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            if len(fields) < 8 or not allowed(fields[4]):
                continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n"


_CREDENTIALS = re.compile(r"^(?P<scheme>turns?):(?P<user>[^:@]+):(?P<password>[^@]+)@(?P<rest>.+)$")


def ice_servers(urls: tuple[str, ...]) -> list[RTCIceServer]:
    """``stun:host:port``, ``turn:host:port?transport=udp`` or ``turn:user:pass@host:port``."""
    servers = []
    for url in urls:
        match = _CREDENTIALS.match(url)
        if match:
            server = RTCIceServer(f"{match['scheme']}:{match['rest']}", match["user"], match["password"])
        else:
            server = RTCIceServer(url)
        parse_stun_turn_uri(server.urls)  # type: ignore[arg-type]  # raises ValueError when malformed
        servers.append(server)
    return servers


# --- peers ------------------------------------------------------------------------


class Peers:
    """The open peer connections; closed all at once at shutdown."""

    def __init__(self) -> None:
        self.open: set[RtcPeer] = set()

    async def close_all(self) -> None:
        await asyncio.gather(*(peer.close("shutdown") for peer in list(self.open)), return_exceptions=True)


@contextlib.asynccontextmanager
async def transport(settings: Settings) -> AsyncIterator[Peers]:
    """The WebRTC transport's shared state for the app's life: set up at startup, closed at shutdown."""
    restrict_host_candidates(settings.ice_hosts)
    peers = Peers()
    try:
        yield peers
    finally:
        await peers.close_all()


class RtcPeer:
    """One session over one peer connection."""

    def __init__(self, state: ServerState, peers: Peers) -> None:
        self.state = state
        self.peers = peers
        self.track = SpeechTrack()
        self.microphone = Microphone("rtc")
        # The token was checked with the offer.
        self.session = state.new_session(authorized=True, sink=lambda _: TrackSink(self.track), recorders={"rtc": self.microphone})
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers(state.settings.ice_servers)))
        self.channel: RTCDataChannel | None = None
        self.closed = False
        self._frames: asyncio.Queue[Frame] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._timeout: asyncio.TimerHandle | None = None
        peers.open.add(self)

    async def answer(self, offer_sdp: str) -> RTCSessionDescription:
        self._wire()
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
            self.pc.addTrack(self.track)
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except Exception as exc:
            await self.close("bad offer")
            if isinstance(exc, MineStreamError):
                raise
            log.info("offer refused: %s", exc)
            raise BadMessage(f"the offer cannot be answered: {exc}") from None
        self._timeout = asyncio.get_running_loop().call_later(self.state.settings.rtc_connect_timeout_s, self._connect_timeout)
        return self.pc.localDescription

    def _wire(self) -> None:
        @self.pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "audio":
                self.microphone.attach(track)

        @self.pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label != CONTROL_LABEL or self.channel is not None:
                channel.close()
                return
            self._bind(channel)

        @self.pc.on("connectionstatechange")
        def on_connection_state() -> None:
            if self.pc.connectionState in ("failed", "closed"):
                self._close_soon(f"connection {self.pc.connectionState}")

        @self.pc.on("iceconnectionstatechange")
        def on_ice_state() -> None:
            if self.pc.iceConnectionState in ("failed", "closed"):
                self._close_soon(f"ICE {self.pc.iceConnectionState}")

    def _bind(self, channel: RTCDataChannel) -> None:
        self.channel = channel
        self.session.opened_at = time.monotonic()  # the hello clock runs from here, not from the offer
        if self._timeout is not None:
            self._timeout.cancel()

        @channel.on("message")
        def on_message(frame: Frame) -> None:
            if self._frames.qsize() >= MAX_PENDING_FRAMES:
                self._close_soon("flooded")
            else:
                self._frames.put_nowait(frame)

        @channel.on("close")
        def on_close() -> None:
            self._close_soon("control channel closed")

        self._reader = self._spawn(self._read(), "reader")
        self._writer = self._spawn(self._write(channel), "writer")

    def _connect_timeout(self) -> None:
        if self.channel is None:
            self._close_soon("no connection in time")

    async def _read(self) -> None:
        # One frame at a time, in order, with the session's clocks, as the WebSocket loop does.
        while True:
            try:
                frame = await asyncio.wait_for(self._frames.get(), self.session.timeout())
            except asyncio.TimeoutError:
                expired = self.session.expired()
                if expired is None:
                    continue
                self.session.connection.send_error(expired)
                self._close_soon(expired.code)
                return
            fatal = await self.session.receive(frame)
            if fatal is not None:
                self._close_soon(f"fatal {fatal.code}")
                return

    async def _write(self, channel: RTCDataChannel) -> None:
        channel.bufferedAmountLowThreshold = CHANNEL_HIGH_WATER // 2
        drained = asyncio.Event()
        channel.on("bufferedamountlow", drained.set)
        send_timeout = self.state.settings.limits.send_timeout_s
        try:
            while (frame := await self.session.outbox.next_frame()) is not None:
                channel.send(frame)
                # aiortc buffers without bound: a peer that does not read must not grow it.
                if channel.bufferedAmount > CHANNEL_HIGH_WATER:
                    drained.clear()
                    await asyncio.wait_for(drained.wait(), send_timeout)
        except Exception:  # overloaded, not reading, or the channel closed under us: the close tears down
            log.debug("writer for %s stopped", self.session.id, exc_info=True)
            self._close_soon("writer stopped")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"rtc-{name}-{self.session.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _close_soon(self, reason: str) -> None:
        if not self.closed:
            self._spawn(self.close(reason), "close")

    async def close(self, reason: str) -> None:
        """Free everything: the session, its tasks, the peer connection. Idempotent."""
        if self.closed:
            return
        self.closed = True
        log.debug("closing %s: %s", self.session.id, reason)
        if self._timeout is not None:
            self._timeout.cancel()
        self.state.forget(self.session)
        self.peers.open.discard(self)
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        await self.session.close()
        if self._writer is not None:
            # Let the writer flush what is queued (a fatal error's message) first.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._writer), FLUSH_TIMEOUT_S)
            self._writer.cancel()
        await self.microphone.close()
        self.track.stop()
        with contextlib.suppress(Exception):
            await self.pc.close()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
