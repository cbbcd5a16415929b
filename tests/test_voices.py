"""The voice library over HTTP and WebSocket, across restarts."""

from __future__ import annotations

import io
import wave
from pathlib import Path
from typing import Any

from tests.audio_checks import assert_speech


async def test_voices_survive_a_restart(server_factory: Any, speech_wav: Path) -> None:
    live = server_factory()
    async with await live.client() as client:
        cloned = await client.upload_voice(speech_wav.read_bytes(), name="Birch", ref_text="The birch canoe slid on the smooth planks.")
    with live.http() as http:
        designed = http.post("/v1/voices", json={"name": "Pirate", "design": "a deep gravelly pirate"}).json()
    live.restart()
    with live.http() as http:
        voices = {v["id"]: v for v in http.get("/v1/voices").json()["voices"]}
        assert voices[cloned["voice_id"]]["name"] == "Birch" and voices[cloned["voice_id"]]["kind"] == "clone"
        assert voices[cloned["voice_id"]]["ref_text"].startswith("The birch canoe")
        assert voices[designed["id"]]["design"] == "a deep gravelly pirate"
        audio = http.get(f"/v1/voices/{cloned['voice_id']}/audio")
        assert audio.headers["content-type"] == "audio/wav"
        with wave.open(io.BytesIO(audio.content)) as wav:
            assert wav.getframerate() == 24000 and wav.getnchannels() == 1
            assert abs(wav.getnframes() / 24 - cloned["duration_ms"]) < 2
    async with await live.client() as client:
        for voice_id in (cloned["voice_id"], designed["id"]):
            speech = await client.say("Voices come back after a restart.", voice_id=voice_id)
            assert_speech(speech.pcm(), 24000, "Voices come back after a restart.")


def test_http_clone_rename_delete(server: Any, speech_wav: Path) -> None:
    with server.http() as http:
        created = http.post(
            "/v1/voices", files={"file": ("me.wav", speech_wav.read_bytes(), "audio/wav")}, data={"name": "Me", "ref_text": "hello"}
        )
        assert created.status_code == 201, created.text
        voice = created.json()
        assert voice["kind"] == "clone" and voice["duration_ms"] > 3000 and voice["has_audio"]
        renamed = http.patch(f"/v1/voices/{voice['id']}", json={"name": "  Renamed   voice "}).json()
        assert renamed["name"] == "Renamed voice"
        assert http.get(f"/v1/voices/{voice['id']}").json()["name"] == "Renamed voice"
        assert http.delete(f"/v1/voices/{voice['id']}").status_code == 204
        gone = http.get(f"/v1/voices/{voice['id']}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "voice_not_found"
        assert http.get(f"/v1/voices/{voice['id']}/audio").status_code == 404


def test_http_bad_uploads_are_clear_errors(server: Any) -> None:
    with server.http() as http:
        junk = http.post("/v1/voices", files={"file": ("x.webm", b"\x1a\x45\xdf\xa3garbage" * 50, "audio/webm")})
        assert junk.status_code == 415 and junk.json()["error"]["code"] == "unsupported_audio"
        missing = http.post("/v1/voices", files={"other": ("x", b"1")})
        assert missing.status_code == 400 and "file" in missing.json()["error"]["message"]
        assert http.post("/v1/voices", json={"name": "x"}).status_code == 400
        assert http.post("/v1/voices", content=b"{not json", headers={"content-type": "application/json"}).status_code == 400
        assert http.get("/v1/voices/..%2F..%2Fetc%2Fpasswd").status_code == 404


def test_ids_and_names_never_become_paths(server: Any, speech_wav: Path) -> None:
    with server.http() as http:
        voice = http.post("/v1/voices", files={"file": ("../../x.wav", speech_wav.read_bytes(), "audio/wav")}, data={"name": "../../evil"}).json()
        assert voice["id"].startswith("v_") and voice["name"] == "../../evil"
        assert http.delete(f"/v1/voices/{voice['id']}").status_code == 204
