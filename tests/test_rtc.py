"""WebRTC sessions against the real server, with an aiortc client on loopback.

The server runs with ``--ice-host 127.0.0.1`` and the client gathers on
127.0.0.1 only (``bench.rtc_client.RtcClient``): nothing else is offered or contacted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("aiortc")

from aiortc import RTCConfiguration, RTCPeerConnection  # noqa: E402
from conftest import LiveServer  # noqa: E402

from bench.rtc_client import FRAME, RATE, SILENT, OfferRefused, RtcClient, read_wav_48k  # noqa: E402
from server.rtc import restrict_host_candidates  # noqa: E402

TOKEN = "rtc-test-token"
TEXT = "Hello there, over a WebRTC track."  # short: the track plays it at real speed
LONG = " ".join(["This is a long sentence that keeps the track busy for a while."] * 4)
CONNECT_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> Iterator[LiveServer]:
    args = ("--engine", "preview", "--ice-host", "127.0.0.1", "--rtc-connect-timeout", str(CONNECT_TIMEOUT_S))
    server = LiveServer(tmp_path_factory.mktemp("rtc") / "data", certs_dir, args, token=TOKEN).start()
    yield server
    server.stop()


async def connect(live: LiveServer, **kwargs: object) -> RtcClient:
    return await RtcClient.connect(live.base_url, ca=live.ssl_context(), token=TOKEN, **kwargs)  # type: ignore[arg-type]


async def sessions_become(live: LiveServer, count: int, timeout: float = 10) -> None:
    """Wait until the server reports ``count`` sessions, said hello or not (another process: polled)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=live.base_url, verify=live.ssl_context()) as http:
        while True:
            health = (await http.get("/healthz")).json()
            sessions = health["sessions"] + health["pending"]
            if sessions == count:
                return
            assert time.monotonic() < deadline, f"{sessions} sessions open, expected {count}"
            await asyncio.sleep(0.1)


def loud_frames_after(heard: object, t: float) -> int:
    times, samples = heard.since(t)  # type: ignore[attr-defined]
    return int((np.abs(samples.reshape(-1, FRAME)).max(axis=1) > SILENT).sum()) if len(samples) else 0


def check_speech(client: RtcClient, sent: float, done: dict[str, object]) -> None:
    """Non-silent speech of the utterance's length, received at real speed."""
    times, samples = client.heard.since(sent)
    loud = np.flatnonzero(np.abs(samples) > 0.01)
    assert len(loud), "nothing audible was received"
    speech = samples[loud[0] : loud[-1] + 1]
    span_ms = len(speech) * 1000 / RATE
    audio_ms = float(done["audio_ms"])  # type: ignore[arg-type]
    # Engines pad with lead-in and trailing silence: the track trims the lead-in.
    assert audio_ms - 500 <= span_ms <= audio_ms + 40, (span_ms, audio_ms)
    assert np.sqrt(np.mean(speech**2)) > 0.02, "the received audio is too quiet to be speech"
    first, last = loud[0] // FRAME, loud[-1] // FRAME
    wall = times[last] - times[first]
    stream = (last - first) * FRAME / RATE
    assert 0.9 * stream - 0.05 <= wall <= 1.1 * stream + 0.05, f"{stream:.2f} s of audio arrived in {wall:.2f} s"


async def test_record_reference_then_design_and_clone(live: LiveServer, speech_wav: Path) -> None:
    client = await connect(live)
    voice: dict[str, object] = {}
    try:
        client.send({"type": "voice_begin", "ref": "mic", "name": "over the track", "source": "rtc"})
        client.mic.play(read_wav_48k(speech_wav)[: 3 * RATE])
        await client.wait_for(lambda m: m.get("ref") == "mic" and m["type"] == "progress" and m["decoded_ms"] >= 3000, 20)
        client.send({"type": "voice_end", "ref": "mic"})
        voice = await client.wait_for(lambda m: m.get("ref") == "mic" and m["type"] in ("voice", "error"))
        assert voice["type"] == "voice", voice
        assert 1500 <= int(voice["duration_ms"]) <= 3200  # type: ignore[call-overload]

        for kwargs in ({"design": "a calm, warm narrator"}, {"voice_id": str(voice["voice_id"])}):
            uid, sent = client.speak(TEXT, **kwargs)  # type: ignore[arg-type]
            done = await client.done(uid)
            assert done["cancelled"] is False and not [m for m in client.messages if m["type"] == "audio"]
            await client.heard.wait_until(lambda h, done=done: h.quiet_since(done["_at"], 6))
            check_speech(client, sent, done)
    finally:
        await client.close()
        if voice.get("voice_id"):
            async with httpx.AsyncClient(base_url=live.base_url, verify=live.ssl_context()) as http:
                await http.delete(f"/v1/voices/{voice['voice_id']}", headers={"Authorization": f"Bearer {TOKEN}"})


async def test_utterances_play_in_order_and_cancel_silences_at_once(live: LiveServer) -> None:
    client = await connect(live, binary=False)  # JSON text frames on the channel
    try:
        first, _ = client.speak("The first utterance comes first.")
        second, _ = client.speak("Then the second.")
        done_first, done_second = await client.done(first), await client.done(second)
        assert not done_first["cancelled"] and not done_second["cancelled"]
        # `done` follows each utterance's last frame: the second played after the first.
        assert done_second["_at"] - done_first["_at"] >= done_second["audio_ms"] / 1000 - 0.4

        uid, sent = client.speak(LONG)
        await client.heard.wait_until(lambda h: loud_frames_after(h, sent) >= 25)
        cancelled_at = time.monotonic()
        client.send({"type": "cancel", "id": uid})
        done = await client.done(uid)
        assert done["cancelled"] is True
        await client.heard.wait_until(lambda h: h.quiet_since(cancelled_at, 10))
        times, samples = client.heard.since(sent)
        loud = np.flatnonzero(np.abs(samples) > SILENT)
        frame, offset = divmod(int(loud[-1]) + 1, FRAME)
        silent_from = times[min(frame, len(times) - 1)] + offset / RATE
        # What the client's own receive buffer holds is not the server's doing.
        held = receive_buffer_s(client)
        print(f"cancel -> silent track: {1000 * (silent_from - held - cancelled_at):.0f} ms (+{1000 * held:.0f} ms client buffer)")
        assert silent_from - held - cancelled_at <= 0.060, f"silent {1000 * (silent_from - held - cancelled_at):.0f} ms after cancel"
    finally:
        await client.close()


def receive_buffer_s(client: RtcClient) -> float:
    """aiortc's receive jitter buffer: a frame leaves when ``prefetch`` newer ones are in."""
    receiver = client.pc.getReceivers()[0]
    buffer = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
    return getattr(buffer, "_prefetch", 4) * FRAME / RATE


async def offer_sdp(*, audio: bool = True, channel: bool = True) -> tuple[RTCPeerConnection, str]:
    restrict_host_candidates(["127.0.0.1"])
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if audio:
        pc.addTransceiver("audio", direction="sendrecv")
    if channel:
        pc.createDataChannel("control")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def test_bad_offers_are_refused_clearly(live: LiveServer) -> None:
    pc_valid, valid = await offer_sdp()
    pc_mute, no_audio = await offer_sdp(audio=False)
    await pc_valid.close()
    await pc_mute.close()
    cases = [
        (b"not json", 400, "bad_message"),
        ({"type": "offer", "token": TOKEN}, 400, "bad_message"),
        ({"sdp": "hello", "type": "offer", "token": TOKEN}, 400, "bad_message"),
        ({"sdp": valid, "type": "answer", "token": TOKEN}, 400, "bad_message"),
        ({"sdp": no_audio, "type": "offer", "token": TOKEN}, 400, "bad_message"),
        ({"sdp": valid + "a=x\r\n" * 20000, "type": "offer", "token": TOKEN}, 413, "too_large"),
        ({"sdp": valid, "type": "offer", "token": "wrong"}, 401, "unauthorized"),
        ({"sdp": valid, "type": "offer"}, 401, "unauthorized"),
    ]
    async with httpx.AsyncClient(base_url=live.base_url, verify=live.ssl_context()) as http:
        for body, status, code in cases:
            kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
            response = await http.post("/v1/rtc/offer", **kwargs)  # type: ignore[arg-type]
            assert response.status_code == status, (body if isinstance(body, bytes) else str(body)[:80], response.text)
            assert response.json()["error"]["code"] == code
    with pytest.raises(OfferRefused) as refused:
        await RtcClient.connect(live.base_url, ca=live.ssl_context(), token="wrong")
    assert refused.value.status == 401
    await sessions_become(live, 0)


async def test_peer_that_never_connects_is_freed(live: LiveServer) -> None:
    pc, sdp = await offer_sdp()
    await pc.close()  # its candidates now lead nowhere
    async with httpx.AsyncClient(base_url=live.base_url, verify=live.ssl_context()) as http:
        response = await http.post("/v1/rtc/offer", json={"sdp": sdp, "type": "offer", "token": TOKEN})
    assert response.status_code == 200 and response.json()["type"] == "answer"
    await sessions_become(live, 1, timeout=2)
    await sessions_become(live, 0, timeout=CONNECT_TIMEOUT_S + 5)


async def test_peer_vanishing_mid_utterance_leaves_others_alone(live: LiveServer) -> None:
    other = await connect(live)
    try:
        gone = await connect(live)
        uid, sent = gone.speak(LONG)
        await gone.heard.wait_until(lambda h: loud_frames_after(h, sent) >= 10)
        await gone.close()
        await sessions_become(live, 1)

        uid, sent = other.speak("Still here.")
        done = await other.done(uid)
        assert done["cancelled"] is False
        await other.heard.wait_until(lambda h: h.quiet_since(done["_at"], 6))
        assert loud_frames_after(other.heard, sent) > 10
    finally:
        await other.close()
    await sessions_become(live, 0)


async def test_shutdown_closes_live_peers(server_factory) -> None:  # type: ignore[no-untyped-def]
    """Stopping the server mid-utterance closes its peer connections and exits cleanly."""
    live = server_factory("--ice-host", "127.0.0.1", token=TOKEN)
    client = await connect(live)
    try:
        _, sent = client.speak(LONG)
        await client.heard.wait_until(lambda heard: heard.first_sound_after(sent) is not None, timeout=10)
        began = time.monotonic()
        await asyncio.to_thread(live.stop)
        assert time.monotonic() - began < 10, "shutdown waited on the peer"
        assert live.process is not None and live.process.returncode == 0, live.log()
        assert "Traceback" not in live.log()
    finally:
        await client.close()
