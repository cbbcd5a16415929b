"""Each hole of the adversarial pass (issue #13), through the real server over TLS on loopback.

Memory is read from the server's /proc/PID/status. Every loop is bounded;
each test stops what it started (the fixtures stop the servers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from client import Client, ServerError
from tests.conftest import LiveServer

TOKEN = "hardening-token"


def rss_mb(live: LiveServer, field: str = "VmRSS") -> float:
    assert live.process is not None
    with open(f"/proc/{live.process.pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(field)


async def sessions_become(live: LiveServer, count: int, timeout: float) -> bool:
    async with httpx.AsyncClient(base_url=live.base_url, verify=live.ssl_context()) as http:
        for _ in range(int(timeout / 0.2)):
            health = (await http.get("/healthz")).json()
            if health["sessions"] + health["pending"] == count:
                return True
            await asyncio.sleep(0.2)
    return False


async def closed_within(ws: Any, seconds: float) -> int | None:
    """The close code once the server closes ``ws`` (None if it did not in time), reading nothing else."""
    try:
        await asyncio.wait_for(ws.wait_closed(), seconds)
    except asyncio.TimeoutError:
        return None
    return ws.close_code  # type: ignore[no-any-return]


# --- 1. memory per connection ----------------------------------------------------------------


async def test_a_client_that_never_reads_is_closed_and_memory_stays_bounded(server_factory: Any) -> None:
    live = server_factory("--send-timeout-s", "3")
    text = "A long utterance nobody reads. "
    async with await live.client() as client:  # both workers' first renders of these pieces grow their arenas: not the stuck client's doing
        await asyncio.gather(*(client.say(text * 3, design="calm") for _ in range(2)))
    before = rss_mb(live)
    # max_queue=1: past the first message the client library stops reading, as a stalled client does.
    # close_timeout: the server has dropped the connection; the client need not wait 10 s for a closing handshake.
    async with connect(live.ws_url, ssl=live.ssl_context(), max_queue=1, compression=None, close_timeout=1) as ws:
        # 48 kHz float: 192 KB per second of audio, more than the kernel's socket buffers hold.
        await ws.send(json.dumps({"type": "hello", "protocol": 1, "format": "pcm_f32le", "sample_rate": 48000}))
        await ws.send(json.dumps({"type": "speak", "id": "a", "text": text * 40, "voice": {"design": "calm"}}))
        with contextlib.suppress(ConnectionClosed):
            for _ in range(30):  # ~27 MB of pings offered, far past what the queue and socket buffers hold
                await ws.send(json.dumps({"type": "ping", "t": "x" * 900_000}))
        assert await sessions_become(live, 0, timeout=30), "the server kept a client that does not read"
    assert rss_mb(live) - before < 100, f"RSS grew from {before:.0f} to {rss_mb(live):.0f} MB"


async def test_junk_before_hello_on_a_token_server_is_cut_off(guarded_server: LiveServer) -> None:
    live = guarded_server
    before = rss_mb(live)
    async with connect(live.ws_url, ssl=live.ssl_context(), compression=None) as ws:
        with contextlib.suppress(ConnectionClosed):
            for _ in range(20):
                await ws.send(json.dumps({"type": "speak", "id": "x", "text": "y" * 100_000, "voice": {"design": "z"}}))
        assert await closed_within(ws, 10) == 1008
    assert rss_mb(live) - before < 30


# --- 2. idle sockets cannot lock anyone out --------------------------------------------------


async def test_idle_sockets_do_not_lock_out_a_client_with_a_token(server_factory: Any) -> None:
    live = server_factory("--max-sessions", "4", "--max-pending", "3", "--hello-timeout-s", "2", token=TOKEN)
    idle = [await connect(live.ws_url, ssl=live.ssl_context()) for _ in range(6)]  # 3 pending, 3 refused
    try:
        async with await Client.connect(live.ws_url, ssl=live.ssl_context(), token=TOKEN) as client:
            assert client.ready.session
        codes = await asyncio.gather(*(closed_within(ws, 10) for ws in idle))
        assert sorted(codes) == [1008, 1008, 1008, 1013, 1013, 1013], codes  # no hello in time; no room
    finally:
        for ws in idle:
            await ws.close()


async def test_an_idle_session_is_closed_but_a_busy_one_is_not(server_factory: Any) -> None:
    live = server_factory("--idle-timeout-s", "1.5")
    async with await live.client() as busy, connect(live.ws_url, ssl=live.ssl_context()) as idle:
        await idle.send(json.dumps({"type": "hello", "protocol": 1}))
        assert json.loads(await idle.recv())["type"] == "ready"
        speech = await busy.speak(" ".join(["A long sentence to keep this session busy for a while."] * 6), design="calm")
        code = await closed_within(idle, 10)
        assert code == 1001
        await speech.collect()
        assert speech.done is not None and not speech.done["cancelled"]


def test_a_tls_connection_that_sends_no_request_is_closed(server_factory: Any) -> None:
    live = server_factory("--request-timeout-s", "1")
    context = live.ssl_context()
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as raw, context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        began = time.monotonic()
        tls.settimeout(10)
        try:
            data = tls.recv(1)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        assert data == b"" and time.monotonic() - began < 8


# --- 3. what one text may cost ----------------------------------------------------------------


async def test_numbers_that_expand_tenfold_cost_no_more_memory_than_a_sentence(server_factory: Any) -> None:
    live = server_factory("--preview-workers", "1")
    async with await live.client() as client:
        # Ordinary text, cut into the longest pieces the preview engine renders, sets the memory it needs
        # (onnxruntime's arena settles after a few pieces of different lengths).
        sentence = (
            "The quick brown fox jumps over the lazy dog, and then it runs far away into the deep green forest, "
            "where the old trees stand tall and quiet under a sky that slowly turns from blue to gold. "
        )
        await client.say(sentence * 3, design="calm")
        before = rss_mb(live, "VmHWM")
        speech = await client.speak(" ".join(["1234567890123456789"] * 3), design="calm")
        await speech.collect()
        assert speech.done is not None and speech.done["audio_ms"] > 20_000
    # Uncut, these three numbers are one piece of ~660 phonemes that grows the peak by ~650 MB; cut, the arena's
    # fragmentation varies the peak by tens of megabytes from run to run (3-90 MB measured).
    assert rss_mb(live, "VmHWM") - before < 300, "one text of numbers grew the server's peak memory"


async def test_text_in_a_script_the_voice_cannot_read_is_refused_at_once(server: LiveServer) -> None:
    async with await server.client() as client:
        speech = await client.speak("مرحبا بكم في هذا الاختبار الطويل جدا", design="calm")
        with pytest.raises(ServerError) as caught:
            await speech.collect()
        assert caught.value.code == "unavailable" and speech.done is not None and speech.done["audio_ms"] == 0
        with server.http() as http:
            response = http.post("/v1/audio/speech", json={"input": "שלום לכולם, זה מבחן", "voice": "alloy"})
            assert response.status_code == 400 and response.json()["error"]["code"] == "unavailable"


# --- 5. bodies are refused while they stream -------------------------------------------------


def _chunks(total: int, piece: bytes, sent: list[int]) -> Iterator[bytes]:
    for _ in range(total // len(piece)):
        sent[0] += len(piece)
        yield piece


@pytest.mark.parametrize(
    ("path", "headers", "total"),
    [
        ("/v1/audio/speech", {"content-type": "application/json"}, 300 << 20),
        ("/v1/voices", {"content-type": "multipart/form-data; boundary=xyz"}, 1 << 30),
    ],
)
def test_a_huge_body_is_refused_before_it_is_read(server: LiveServer, path: str, headers: dict[str, str], total: int) -> None:
    before = rss_mb(server)
    sent = [0]
    head = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n' if "multipart" in headers["content-type"] else b""

    def body() -> Iterator[bytes]:
        yield head + b'{"input": "'
        yield from _chunks(total, b"a" * (1 << 16), sent)

    with server.http() as http:
        try:
            response = http.post(path, content=body(), headers=headers)
            assert response.status_code == 413
        except (httpx.RemoteProtocolError, httpx.WriteError, httpx.ReadError):
            pass  # the server answered 413 and closed while we were still sending
    assert sent[0] < 64 << 20, f"{sent[0] >> 20} MiB went out before the refusal"
    assert rss_mb(server) - before < 60


def test_a_declared_length_over_the_limit_is_refused_unread(server: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, server.ssl_context().wrap_socket(
        raw, server_hostname="127.0.0.1"
    ) as tls:
        tls.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 999999999\r\n\r\n")
        answer = tls.recv(4096)
    assert b" 413 " in answer.split(b"\r\n")[0]


# --- 7. tokens stay out of the logs -------------------------------------------------------------


async def test_the_token_appears_only_in_the_startup_banner(server_factory: Any) -> None:
    live = server_factory("--log-level", "info", token=TOKEN)
    with live.http() as http:
        assert http.get(f"/?token={TOKEN}").status_code == 200
        assert http.get(f"/v1/voices?token={TOKEN}").status_code == 200
        assert http.get("/v1/voices", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    async with await Client.connect(live.ws_url + f"?token={TOKEN}", ssl=live.ssl_context(), token=None) as client:
        await client.say("Logged.", design="calm")
    live.stop()
    log = live.log()
    assert "GET /v1/voices?token=[redacted]" in log and "utterance" in log
    assert log.count(TOKEN) == 1, "the token is in the log beyond the startup banner"


# --- 9. edge cases ---------------------------------------------------------------------------------


async def test_a_lone_surrogate_in_a_msgpack_session_does_not_silence_it(server: LiveServer) -> None:
    async with connect(server.ws_url, ssl=server.ssl_context()) as ws:
        await ws.send(msgpack.packb({"type": "hello", "protocol": 1}))
        assert msgpack.unpackb(await ws.recv())["type"] == "ready"
        await ws.send('{"type": "cancel", "id": "\\ud800"}')
        assert msgpack.unpackb(await asyncio.wait_for(ws.recv(), 10))["type"] == "error"
        await ws.send(msgpack.packb({"type": "ping", "t": 7}))
        assert msgpack.unpackb(await asyncio.wait_for(ws.recv(), 10)) == {"type": "pong", "t": 7}


# --- 11. graceful drain ----------------------------------------------------------------------------


async def test_sigterm_lets_the_utterance_finish_then_closes_with_1012(server_factory: Any) -> None:
    live = server_factory("--drain-timeout", "30")
    async with await live.client() as client:
        speech = await client.speak(" ".join(["This sentence is in flight when the server is told to stop."] * 4), design="calm")
        collecting = asyncio.create_task(speech.collect())
        for _ in range(200):  # until audio flows
            if speech.chunks:
                break
            await asyncio.sleep(0.05)
        assert speech.chunks and live.process is not None
        live.process.send_signal(signal.SIGTERM)
        async with httpx.AsyncClient(base_url=live.base_url, verify=live.ssl_context()) as http:
            for _ in range(50):
                try:
                    if (await http.get("/readyz")).status_code == 503:
                        break
                except httpx.HTTPError:
                    break  # no longer accepting: also not ready
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("/readyz stayed 200 while draining")
        await collecting
        assert speech.done is not None and speech.done["cancelled"] is False
        await asyncio.wait_for(client.ws.wait_closed(), 15)
        assert client.ws.close_code == 1012
    live.process.wait(timeout=15)


def test_ctrl_c_does_not_wait_on_idle_keep_alive_connections(server_factory: Any) -> None:
    live = server_factory()
    with live.http() as http:  # a pooled connection, idle and not reading, as a client's pool keeps it
        assert http.get("/healthz").status_code == 200
        assert live.process is not None
        live.process.send_signal(signal.SIGINT)
        # uvicorn gives open connections 3 s (timeout_graceful_shutdown); a polite TLS close of this
        # one would wait for a close_notify it never sends and use them all. Idle, it is dropped.
        live.process.wait(timeout=2.5)
