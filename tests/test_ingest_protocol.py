"""Reference uploads through the real server: wss, protocol v1, piece by piece.

Each corpus recording is sent exactly as the browser handed its pieces over;
the stored voice is fetched back and compared with an independent one-shot
decode of the whole file, prepared the same way. Bad input must get an error
(or a clean abandon) and leave the session, the server and its threads as
they were.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
import wave
from typing import Any

import numpy as np
import pytest
from test_ingest import RECORDINGS, STREAMABLE, correlation, load, one_shot, speechy, tone, wav_bytes

from server.audio import SAMPLE_RATE
from server.reference import prepare_reference

VOICE_TIMEOUT_S = 30.0


async def upload(client: Any, pieces: list[bytes], mime: str | None, ref: str,
                 end: bool = True) -> tuple[list[dict[str, Any]], float]:
    """Send an upload piece by piece; the messages for ``ref`` up to voice or error.

    Returns those messages and the voice_end -> answer latency in ms.
    """
    # The client routes messages by ref to a queue per open upload; register one
    # so `progress` is kept (Client.upload_voice splits bytes evenly, not by piece).
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    client._uploads[ref] = queue
    begin = {"type": "voice_begin", "ref": ref, "name": ref}
    if mime:
        begin["mime"] = mime
    await client.send(begin)
    for piece in pieces:
        await client.send({"type": "voice_chunk", "ref": ref, "data": piece})
    if not end:
        return [], 0.0
    sent = time.perf_counter()
    await client.send({"type": "voice_end", "ref": ref})
    messages = []
    try:
        while True:
            message = await asyncio.wait_for(queue.get(), VOICE_TIMEOUT_S)
            messages.append(message)
            if message["type"] in ("voice", "error"):
                return messages, (message["_received"] - sent) * 1000
    finally:
        client._uploads.pop(ref, None)


def answer(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return messages[-1]


def stored_audio(server: Any, voice_id: str) -> np.ndarray:
    with server.http() as http:
        response = http.get(f"/v1/voices/{voice_id}/audio")
        assert response.status_code == 200
        http.delete(f"/v1/voices/{voice_id}")  # leave the shared server as found
    with wave.open(io.BytesIO(response.content)) as w:
        assert (w.getframerate(), w.getnchannels()) == (SAMPLE_RATE, 1)
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768


def server_threads(server: Any) -> int:
    return len(os.listdir(f"/proc/{server.process.pid}/task"))


def settle_threads(server: Any, at_most: int, timeout: float = 3.0) -> int:
    deadline = time.monotonic() + timeout
    while (count := server_threads(server)) > at_most and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


@pytest.fixture(scope="module")
def baseline_threads(server: Any) -> int:
    async def warm() -> None:  # so pools the server starts lazily exist already
        client = await server.client()
        pieces, mime, _ = load("chrome-webm-opus-250ms")
        messages, _ = await upload(client, pieces, mime, "warm")
        stored_audio(server, answer(messages)["voice_id"])
        await client.close()

    asyncio.run(warm())
    return settle_threads(server, 0, timeout=0.5)


@pytest.mark.parametrize("name", RECORDINGS)
def test_recording_piece_by_piece(server: Any, name: str) -> None:
    pieces, mime, data = load(name)

    async def run() -> tuple[list[dict[str, Any]], float]:
        client = await server.client()
        try:
            return await upload(client, pieces, mime, "r1")
        finally:
            await client.close()

    messages, latency_ms = asyncio.run(run())
    voice = answer(messages)
    assert voice["type"] == "voice", voice
    if name in STREAMABLE:  # plain MP4 decodes only at the end
        assert any(m["type"] == "progress" for m in messages[:-1]), "progress must precede voice"
    expected = prepare_reference(one_shot(data))
    stored = stored_audio(server, voice["voice_id"])
    assert abs(voice["duration_ms"] - expected.size * 1000 / SAMPLE_RATE) <= 20
    assert abs(stored.size - expected.size) <= 0.020 * SAMPLE_RATE
    assert correlation(stored, expected) > 0.99
    print(f"{name}: voice_end -> voice {latency_ms:.1f} ms")


def test_progress_arrives_while_uploading(server: Any) -> None:
    pieces, mime, _ = load("chrome-webm-opus-100ms")

    async def run() -> list[dict[str, Any]]:
        client = await server.client()
        try:
            queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            client._uploads["p"] = queue
            await client.send({"type": "voice_begin", "ref": "p", "mime": mime})
            for piece in pieces:
                await client.send({"type": "voice_chunk", "ref": "p", "data": piece})
            early = await asyncio.wait_for(queue.get(), 10)  # before voice_end is sent
            await client.send({"type": "voice_end", "ref": "p"})
            messages = [early]
            while messages[-1]["type"] not in ("voice", "error"):
                messages.append(await asyncio.wait_for(queue.get(), 10))
            return messages
        finally:
            await client.close()

    messages = asyncio.run(run())
    assert messages[0]["type"] == "progress" and messages[0]["decoded_ms"] > 0
    decoded = [m["decoded_ms"] for m in messages if m["type"] == "progress"]
    assert decoded == sorted(decoded)
    stored_audio(server, messages[-1]["voice_id"])


@pytest.mark.parametrize("name", ["chrome-webm-opus-250ms", "pyav-mp4-aac"])
def test_http_upload_uses_same_decoder(server: Any, name: str) -> None:
    _, mime, data = load(name)
    with server.http() as http:
        response = http.post("/v1/voices", files={"file": ("rec", data, mime)}, data={"name": name})
    assert response.status_code == 201, response.text
    record = response.json()
    expected = prepare_reference(one_shot(data))
    assert abs(record["duration_ms"] - expected.size * 1000 / SAMPLE_RATE) <= 20
    stored_audio(server, record["id"])


# -- bad input: an error with a message, then the session goes on ---------------------

def _garbage() -> list[bytes]:
    return [b"this is not audio " * 50, bytes(range(256)) * 4]


def _foreign_mid_stream() -> list[bytes]:
    pieces, _, _ = load("chrome-webm-opus-250ms")
    ogg, _, _ = load("pyav-ogg-opus")
    return pieces[:3] + ogg[:2] + pieces[3:]


def _wav(pcm: np.ndarray, rate: int = SAMPLE_RATE) -> list[bytes]:
    data = wav_bytes(pcm, rate)
    return [data[i : i + 65536] for i in range(0, len(data), 65536)]


BAD_UPLOADS = {  # name: (pieces, mime, accepted error codes; "voice" if a voice may result)
    "garbage": (_garbage, "audio/webm", {"unsupported_audio"}),
    "zero-byte-only": (lambda: [b""], "audio/webm", {"unsupported_audio"}),
    "nothing": (lambda: [], None, {"unsupported_audio"}),
    "later-pieces-only": (lambda: load("chrome-webm-opus-250ms")[0][1:], "audio/webm", {"unsupported_audio"}),
    "foreign-mid-stream": (_foreign_mid_stream, "audio/webm", {"unsupported_audio"}),
    "silent": (lambda: _wav(np.zeros(3 * SAMPLE_RATE, np.float32)), "audio/wav", {"unsupported_audio"}),
    "too-short": (lambda: _wav(tone(0.5)), "audio/wav", {"unsupported_audio"}),
    "clipped": (lambda: _wav(np.clip(speechy(3.0) * 20, -1, 1)), "audio/wav", {"unsupported_audio"}),
    "over-hard-cap": (lambda: _wav(speechy(61.0), 8000), "audio/wav", {"limit"}),
    "corrupt-piece": (lambda: _corrupt("chrome-mp4-250ms"), "audio/mp4", {"unsupported_audio", "voice"}),
    "truncated": (lambda: _truncated("pyav-fmp4-aac"), "audio/mp4", {"unsupported_audio", "voice"}),
}


def _corrupt(name: str) -> list[bytes]:
    pieces, _, _ = load(name)
    k = len(pieces) // 2
    noise = np.random.default_rng(0).integers(0, 256, len(pieces[k]), dtype=np.uint8).tobytes()
    return pieces[:k] + [noise] + pieces[k + 1:]


def _truncated(name: str) -> list[bytes]:
    pieces, _, _ = load(name)
    return pieces[:-2] + [pieces[-2][: len(pieces[-2]) // 2]]


def test_bad_uploads_get_clear_errors(server: Any, baseline_threads: int) -> None:
    async def run() -> dict[str, dict[str, Any]]:
        client = await server.client()
        results = {}
        try:
            for name, (make, mime, _) in BAD_UPLOADS.items():
                messages, _ = await upload(client, make(), mime, name)
                results[name] = answer(messages)
            # The same session still works afterwards.
            pieces, mime, _ = load("chrome-webm-opus-1000ms")
            results["after"] = answer((await upload(client, pieces, mime, "after"))[0])
            assert (await client.ping(1))["t"] == 1
        finally:
            await client.close()
        return results

    results = asyncio.run(run())
    for name, (_, _, accepted) in BAD_UPLOADS.items():
        got = results[name]
        code = "voice" if got["type"] == "voice" else got.get("code")
        assert code in accepted, (name, got)
        if got["type"] == "error":
            assert got["ref"] == name and not got["fatal"] and len(got["message"]) > 20, got
        else:
            stored_audio(server, got["voice_id"])
    assert results["after"]["type"] == "voice"
    stored_audio(server, results["after"]["voice_id"])
    assert "1 s" in results["too-short"]["message"] and "silent" in results["silent"]["message"]
    assert settle_threads(server, baseline_threads) <= baseline_threads


def test_long_reference_keeps_best_part(server: Any) -> None:
    async def run() -> dict[str, Any]:
        client = await server.client()
        try:
            return answer((await upload(client, _wav(speechy(40.0)), "audio/wav", "long"))[0])
        finally:
            await client.close()

    voice = asyncio.run(run())
    assert voice["type"] == "voice" and 15_000 <= voice["duration_ms"] <= 20_050
    stored_audio(server, voice["voice_id"])


def test_abandoned_uploads_free_their_threads(server: Any, baseline_threads: int) -> None:
    pieces, mime, _ = load("chrome-webm-opus-250ms")

    async def run() -> None:
        for i in range(4):  # disconnect mid-upload, never sending voice_end
            client = await server.client()
            await upload(client, pieces[: 3 + i], mime, f"gone{i}", end=False)
            await client.ping()  # the pieces have been handled
            await client.ws.close()
            await client.close()
        # Other sessions are unaffected, during and after.
        client = await server.client()
        try:
            await upload(client, pieces[:4], mime, "open", end=False)
            other = await server.client()
            voice = answer((await upload(other, pieces, mime, "ok"))[0])
            assert voice["type"] == "voice"
            stored_audio(server, voice["voice_id"])
            await other.close()
        finally:
            await client.close()

    asyncio.run(run())
    assert settle_threads(server, baseline_threads) <= baseline_threads
