"""The HTTP routes and the WebSocket route in-process: Starlette's TestClient and a mock engine."""

from __future__ import annotations

import io
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from server.app import create_app
from server.audio import SAMPLE_RATE
from server.config import Limits, Settings
from server.engines.mock import MockEngine
from tests.test_session import speech_wav


@pytest.fixture
def engine() -> MockEngine:
    return MockEngine()


@pytest.fixture
def http(tmp_path: Path, engine: MockEngine) -> Iterator[TestClient]:
    settings = Settings(host="127.0.0.1", data_dir=tmp_path / "data", certs_dir=tmp_path / "certs", limits=Limits(max_text_chars=200))
    with TestClient(create_app(settings, engine=engine), base_url="https://testserver") as client:
        yield client


def test_healthz_reports_the_engine_and_metrics_count(http: TestClient) -> None:
    health = http.get("/healthz").json()
    assert health["status"] == "ok" and health["engine"]["name"] == "mock" and health["sessions"] == 0
    metrics = http.get("/metrics")
    assert metrics.status_code == 200 and "minestream_errors_total" in metrics.text


def test_the_voice_library_round_trip(http: TestClient) -> None:
    created = http.post("/v1/voices", files={"file": ("me.wav", speech_wav(), "audio/wav")}, data={"name": "Me", "ref_text": "hi"})
    assert created.status_code == 201
    voice = created.json()
    assert voice["kind"] == "clone" and voice["has_audio"] and voice["ref_text"] == "hi"
    designed = http.post("/v1/voices", json={"name": "Pirate", "design": "a gravelly pirate"}).json()
    assert [v["id"] for v in http.get("/v1/voices").json()["voices"]] == [voice["id"], designed["id"]]
    assert http.patch(f"/v1/voices/{voice['id']}", json={"name": "Renamed"}).json()["name"] == "Renamed"
    audio = http.get(f"/v1/voices/{voice['id']}/audio")
    with wave.open(io.BytesIO(audio.content)) as wav:
        assert wav.getframerate() == SAMPLE_RATE and abs(wav.getnframes() * 1000 // SAMPLE_RATE - voice["duration_ms"]) <= 1
    assert http.delete(f"/v1/voices/{voice['id']}").status_code == 204
    assert http.get(f"/v1/voices/{voice['id']}").status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"json": {"name": "x"}}, 400, "bad_message"),
        ({"json": {"design": " "}}, 400, "bad_message"),
        ({"content": b"[1]", "headers": {"content-type": "application/json"}}, 400, "bad_message"),
        ({"files": {"file": ("junk.bin", b"not audio" * 100, "application/octet-stream")}}, 415, "unsupported_audio"),
        ({"files": {"other": ("a.wav", b"x", "audio/wav")}}, 400, "bad_message"),
    ],
)
def test_voice_creation_errors(http: TestClient, body: dict[str, object], status: int, code: str) -> None:
    response = http.post("/v1/voices", **body)  # type: ignore[arg-type]
    assert response.status_code == status and response.json()["error"]["code"] == code


def test_the_socket_route_speaks_protocol_v1(http: TestClient) -> None:
    with http.websocket_connect("/v1/stream") as ws:
        ws.send_json({"type": "hello", "protocol": 1})
        assert ws.receive_json()["type"] == "ready"
        ws.send_json({"type": "speak", "id": "a", "text": "Hi there.", "voice": {"design": "calm"}})
        kinds = []
        while not kinds or kinds[-1] != "done":
            kinds.append(ws.receive_json()["type"])
        assert set(kinds[:-1]) == {"audio"}
        assert http.get("/healthz").json()["sessions"] == 1


def test_a_foreign_origin_cannot_open_the_socket(http: TestClient) -> None:
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect) as caught, http.websocket_connect("/v1/stream", headers={"origin": "https://evil.example"}):
        pass
    assert caught.value.code == 1008


def _sample(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_the_http_path_counts_in_the_metrics(http: TestClient) -> None:
    before = http.get("/metrics").text
    assert http.post("/v1/audio/speech", json={"input": "Counted.", "voice": "alloy", "response_format": "pcm"}).status_code == 200
    after = http.get("/metrics").text
    assert _sample(after, 'minestream_utterances_total{path="http"}') == _sample(before, 'minestream_utterances_total{path="http"}') + 1
    assert _sample(after, 'minestream_audio_seconds_total{path="http"}') > _sample(before, 'minestream_audio_seconds_total{path="http"}')
    assert _sample(after, 'minestream_ttfa_seconds_count{path="http"}') == _sample(before, 'minestream_ttfa_seconds_count{path="http"}') + 1


def test_livez_and_readyz(http: TestClient) -> None:
    assert http.get("/livez").json() == {"status": "alive"}
    assert http.get("/readyz").status_code == 200
    http.app.state.minestream.draining = True  # type: ignore[attr-defined]
    assert http.get("/readyz").json() == {"status": "draining"} and http.get("/readyz").status_code == 503


def test_cors_answers_an_allowed_origin_only(tmp_path: Path, engine: MockEngine) -> None:
    settings = Settings(host="127.0.0.1", data_dir=tmp_path / "d", certs_dir=tmp_path / "c", allowed_origins=("https://app.example",))
    with TestClient(create_app(settings, engine=engine), base_url="https://testserver") as client:
        asked = {"access-control-request-method": "POST", "access-control-request-headers": "content-type"}
        allowed = client.options("/v1/audio/speech", headers={"origin": "https://app.example", **asked})
        assert allowed.headers.get("access-control-allow-origin") == "https://app.example"
        foreign = client.options("/v1/audio/speech", headers={"origin": "https://evil.example", **asked})
        assert "access-control-allow-origin" not in foreign.headers
        refused = client.post("/v1/voices", json={"design": "x"}, headers={"origin": "https://evil.example"})
        assert refused.status_code == 403
        plain = client.post("/v1/voices", content=b'{"design": "x"}', headers={"content-type": "text/plain"})
        assert plain.status_code == 400
        ok = client.post("/v1/voices", json={"design": "calm"}, headers={"origin": "https://app.example"})
        assert ok.status_code == 201 and ok.headers["access-control-allow-origin"] == "https://app.example"
