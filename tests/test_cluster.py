"""The engine tier on a real local Ray Serve cluster: two preview replicas, two fronts, one PostgreSQL library.

One cluster (``python -m server.cluster``, loopback only, two CPUs, no dashboard)
and two fronts (``--engine ray``) serve the whole module; the tests leave them
with two running replicas, as they found them.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from client import ServerError
from tests.audio_checks import assert_speech
from tests.conftest import ROOT, LiveServer
from tests.postgres import PostgresServer

# One sentence without a clause mark, so one engine request (server/text.py sends a first clause ahead
# alone), whose audio streams for many seconds, piece by piece: any audio heard means it is mid-stream.
LONG_TEXT = (
    "This one long sentence keeps on going past the river and the mill and over the hill and far away from here "
    "along the road that winds between the fields and beyond the wood where the old owl sleeps "
    "and then back again by evening so that it takes a good long while to speak."
)
# An utterance of many pieces, so that a replica the front sees serving it (a report reaches a front
# up to ~1 s late) is still serving it.
KILL_TEXT = " and then ".join([LONG_TEXT.rstrip(".")] * 4) + "."


@dataclass
class Cluster:
    address: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_cluster(root: Path, *args: str, timeout: float = 180) -> Cluster:
    address_file = root / "address"
    log_path = root / "cluster.log"
    command = [sys.executable, "-m", "server.cluster", "--engine", "preview", "--num-cpus", "2", "--preview-threads", "1",
               "--data-dir", str(root / "data"), "--address-file", str(address_file), "--log-level", "warning", *args]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log:
        # Its own session: Ray's processes are its children, and all of them go at the end.
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not address_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_cluster(process)
            raise RuntimeError(f"the cluster did not come up:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.2)
    return Cluster(address_file.read_text().strip(), process, log_path)


def stop_cluster(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    try:
        os.killpg(process.pid, signal.SIGKILL)  # whatever of Ray outlived its driver
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started = start_cluster(tmp_path_factory.mktemp("ray"), "--replicas", "2")
    yield started
    stop_cluster(started.process)


@pytest.fixture(scope="module")
def all_fronts(cluster: Cluster, postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> Iterator[list[LiveServer]]:
    """Two fronts on the cluster sharing one voice library in PostgreSQL, and one whose Serve application is absent."""
    root = tmp_path_factory.mktemp("fronts")
    args = ("--engine", "ray", "--ray-address", cluster.address, "--database-url", postgres.database())
    servers = [LiveServer(root / "a", certs_dir, args), LiveServer(root / "b", certs_dir, args)]
    servers.append(LiveServer(root / "absent", certs_dir, ("--engine", "ray", "--ray-address", cluster.address, "--ray-app", "absent")))
    try:
        with ThreadPoolExecutor(len(servers)) as pool:  # started side by side: each waits mostly on Ray
            list(pool.map(LiveServer.start, servers))
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def fronts(all_fronts: list[LiveServer]) -> tuple[LiveServer, LiveServer]:
    return all_fronts[0], all_fronts[1]


def engine_health(front: LiveServer) -> dict[str, Any]:
    with front.http() as http:
        return dict(http.get("/healthz").json()["engine"])


def replicas(front: LiveServer) -> list[dict[str, Any]]:
    return list(engine_health(front)["replicas"])


async def wait_for(condition: Any, what: str, front: LiveServer, timeout: float = 30.0) -> Any:
    """Poll ``condition`` (it reads the front's view of the replicas, a report or two behind) until true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; the replicas: {replicas(front)}")


async def test_clone_on_one_front_speak_on_the_other(fronts: tuple[LiveServer, LiveServer], speech_wav: Path) -> None:
    front_a, front_b = fronts
    async with await front_a.client() as client:
        engine = client.ready["engine"]
        assert engine["kind"] == "ray" and engine["replicas_running"] == 2
        assert len(engine["replicas"]) == 2 and all(r["resident"] == ["piper:en_US-joe-medium"] for r in engine["replicas"])
        cloned = await client.upload_voice(speech_wav.read_bytes(), name="Birch", ref_text="The birch canoe slid on the smooth planks.")
    with front_a.http() as http:  # a designed voice saved through the cluster (render_design on a replica)
        designed = http.post("/v1/voices", json={"name": "Narrator", "design": "a calm narrator"})
    assert designed.status_code == 201 and designed.json()["kind"] == "design"
    before = {r["id"]: r for r in replicas(front_b)}
    text = "The other front speaks this. It has two sentences."
    async with await front_b.client() as client:
        spoken = await asyncio.gather(*(client.say(text, voice_id=cloned["voice_id"]) for _ in range(3)))
    for speech in spoken:
        assert_speech(speech.pcm(), 24000, text)

    def served_by_both() -> list[dict[str, Any]] | None:
        now = replicas(front_b)
        return now if all(r["served"] > before[r["id"]]["served"] for r in now) else None

    after = await wait_for(served_by_both, "both replicas to report work", front_b)
    with front_b.http() as http:
        assert {cloned["voice_id"], designed.json()["id"]} <= {v["id"] for v in http.get("/v1/voices").json()["voices"]}
    # Six segments in one cloned voice: its reference went to each replica at most once.
    assert all(r["references_fetched"] - before[r["id"]]["references_fetched"] <= 1 for r in after)
    assert sum(r["references"] for r in after) >= 1


def idle(reports: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The reports when no replica has a stream active, else None."""
    return None if sum(r["active"] for r in reports) else reports


async def test_cancel_reaches_the_replica(fronts: tuple[LiveServer, LiveServer]) -> None:
    front = fronts[1]
    async with await front.client() as client:
        # A replica runs ahead of its listener: on a loaded machine it may have finished the piece in
        # flight by the time the cancel arrives, and then there is nothing left to cancel there. So a
        # few tries, each of which must end with no stream active; one must land mid-request.
        for _ in range(3):
            cancelled_before = sum(r["cancelled"] for r in replicas(front))
            speech = await client.speak(LONG_TEXT, design="a calm narrator")
            async for _ in speech:
                break  # audio: the replica is mid-stream
            await wait_for(lambda: sum(r["active"] for r in replicas(front)) > 0, "the replica to report the stream", front)
            await speech.cancel()
            await speech.collect()
            assert speech.done is not None and speech.done["cancelled"]
            now = await wait_for(lambda: idle(replicas(front)), "the replica to drop the stream", front)
            if sum(r["cancelled"] for r in now) > cancelled_before:
                break
        else:
            raise AssertionError(f"three cancels and none reached a replica mid-request: {replicas(front)}")
        after = await client.say("Still speaking after the cancel.", design="a calm narrator")
    assert_speech(after.pcm(), 24000, "Still speaking after the cancel.")


def replaced(front: LiveServer, killed: int) -> bool:
    """Serve runs two replicas again, and neither is ``killed``."""
    # A new replica reports from its constructor, before Serve counts it as running: wait for both.
    engine = engine_health(front)
    now = engine["replicas"]
    return engine["replicas_running"] == 2 and len(now) == 2 and killed not in {r["pid"] for r in now}


async def test_replica_killed_mid_stream(fronts: tuple[LiveServer, LiveServer]) -> None:
    front_a, front_b = fronts
    async with await front_a.client() as client:
        # The front sends the replica an utterance piece by piece. A kill that lands between two pieces, or
        # in a piece that has sent no audio yet, is retried on the other replica and the utterance ends
        # well, which is right too. So a few tries (each waits for Serve to replace the replica); one must
        # land mid-piece, and that one must end the utterance with a clear error.
        for _ in range(3):
            # Nothing else running (in this front's view too), so the replica that reports a stream next serves this one.
            await wait_for(lambda: sum(r["active"] for r in replicas(front_a)) == 0, "the replicas to be idle", front_a)
            speech = await client.speak(KILL_TEXT, design="a calm narrator")
            async for _ in speech:
                break  # audio: the replica is mid-stream
            serving = await wait_for(lambda: [r for r in replicas(front_a) if r["active"] > 0], "the serving replica to report", front_a)
            killed = serving[0]["pid"]
            os.kill(killed, signal.SIGKILL)
            try:
                await speech.collect()
            except ServerError as ended:
                assert ended.code == "engine_error" and "died mid-stream" in ended.message
                assert speech.done is not None and speech.done["cancelled"]
                break
            assert speech.done is not None and not speech.done["cancelled"]  # retried elsewhere, whole
            await wait_for(functools.partial(replaced, front_b, killed), "Serve to replace the killed replica", front_b, timeout=120)
        else:
            raise AssertionError("three kills and none landed in a piece that had sent audio")
        # The session lives on; these reach the replica left (a request routed to the dead one before the
        # router knows is retried there, since it had sent no audio).
        after = await asyncio.gather(*(client.say("The session lives on.", design="a calm narrator") for _ in range(3)))
        for speech in after:
            assert_speech(speech.pcm(), 24000, "The session lives on.")

    await wait_for(functools.partial(replaced, front_b, killed), "Serve to replace the killed replica", front_b, timeout=120)
    async with await front_b.client() as client:
        assert client.ready["engine"]["replicas_running"] == 2
        spoken = await asyncio.gather(*(client.say("The cluster recovered.", design="a bright voice") for _ in range(2)))
    for speech in spoken:
        assert_speech(speech.pcm(), 24000, "The cluster recovered.")


async def test_no_replica_is_unavailable(all_fronts: list[LiveServer]) -> None:
    """A front whose Serve application is not deployed: it starts, says so, and refuses speech clearly."""
    front = all_fronts[2]
    with front.http() as http:
        health = http.get("/healthz").json()
    assert health["status"] == "unavailable" and health["engine"]["replicas_running"] == 0
    async with await front.client() as client:
        assert client.ready["engine"]["state"] == "unavailable"
        with pytest.raises(ServerError) as refused:
            await client.say("Nobody serves this.", design="a calm narrator")
    assert refused.value.code == "unavailable" and "no engine replica" in refused.value.message


# Ray Serve's own models still use Pydantic 1 idioms; that is Ray's to fix, not noise for this suite.
@pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`")
def test_deployment_options_follow_the_engine() -> None:
    """What Serve is asked for (no cluster needed): GPUs, routing capacity, autoscaling."""
    from server.config import Settings
    from server.replica import build_app

    qwen = build_app(Settings(engine="qwen"), replicas=2)._bound_deployment
    assert qwen.ray_actor_options["num_gpus"] == 1 and qwen.num_replicas == 2
    assert qwen.max_ongoing_requests == 64  # the Qwen engine's decode rows per model
    preview = build_app(Settings(engine="preview", preview_workers=2), min_replicas=0, max_replicas=3)._bound_deployment
    assert "num_gpus" not in preview.ray_actor_options and preview.max_ongoing_requests == 8
    scaling = preview._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas, scaling.target_ongoing_requests) == (0, 3, 6.0)
