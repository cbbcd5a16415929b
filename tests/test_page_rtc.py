"""The talk-back page's WebRTC transport (client/static/rtc.js) in headless Chromium.

The page is loaded from the real server; the test drives ``RtcConnection``
inside it: the fake microphone (a WAV file) records a reference over the
track, then a designed voice speaks and the remote track is played and
analysed with WebAudio; ``done`` comes on the data channel.

Loopback only: Chromium leaves loopback out of WebRTC unless
``--allow-loopback-in-peer-connection``; it also gathers on every other
interface, so the offer is cut to its 127.0.0.1 UDP candidates before it
reaches the server, and the server (``--ice-host 127.0.0.1``) ignores checks
from anything but loopback. No other address is offered to or contacted by it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import browser
import pytest
from conftest import LiveServer

pytestmark = pytest.mark.skipif(not browser.chromium_available(), reason=browser.skip_reason())
pytest.importorskip("aiortc")

TOKEN = "rtc-page-token"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> Iterator[LiveServer]:
    args = ("--engine", "preview", "--ice-host", "127.0.0.1")
    server = LiveServer(tmp_path_factory.mktemp("rtc-page") / "data", certs_dir, args, token=TOKEN).start()
    yield server
    server.stop()


def loopback_offer(route: Any) -> None:
    body = json.loads(route.request.post_data or "{}")
    lines = body.get("sdp", "").split("\r\n")
    keep = [line for line in lines if not line.startswith("a=candidate:") or (" udp " in line and " 127.0.0.1 " in line)]
    route.continue_(post_data=json.dumps({**body, "sdp": "\r\n".join(keep)}))


RUN = """async (token) => {
  const { RtcConnection } = await import('/rtc.js');
  const conn = new RtcConnection({ token: () => token });
  window.rtc = conn;
  const messages = [];
  const next = (pred) => new Promise((resolve) => {
    const found = messages.find(pred);
    if (found) return resolve(found);
    const check = (m) => { if (pred(m)) resolve(m); };
    for (const type of ['ready', 'progress', 'voice', 'done', 'error']) conn.on(type, check);
  });
  for (const type of ['ready', 'progress', 'voice', 'done', 'error']) conn.on(type, (m) => messages.push(m));
  conn.connect();
  await next((m) => m.type === 'ready' || m.type === 'error');
  if (!conn.isReady) return { error: messages };
  // Play the speech track from the start, as the page does: an unplayed remote
  // track is not drained by Chromium and would replay its backlog later.
  const audio = new Audio();
  document.body.append(audio);
  await conn.attachAudio(audio);
  const ctx = new AudioContext();
  await ctx.resume();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 2048;
  const mute = ctx.createGain();
  mute.gain.value = 0;
  ctx.createMediaStreamSource(conn.remoteStream).connect(analyser);
  analyser.connect(mute).connect(ctx.destination); // nodes render only when pulled
  const buf = new Float32Array(analyser.fftSize);
  let loudMs = 0, firstLoud = null;
  const energy = async () => {
    const stats = await conn.pc.getStats();
    for (const s of stats.values()) if (s.type === 'inbound-rtp' && s.kind === 'audio') return s.totalAudioEnergy || 0;
    return 0;
  };

  // Record a reference from the (fake) microphone over the track.
  const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
  await conn.setMicrophone(mic.getAudioTracks()[0]);
  conn.send({ type: 'voice_begin', ref: 'page', name: 'page mic', source: 'rtc' });
  await next((m) => m.ref === 'page' && (m.type === 'error' || (m.type === 'progress' && m.decoded_ms >= 3000)));
  conn.send({ type: 'voice_end', ref: 'page' });
  const voice = await next((m) => m.ref === 'page' && (m.type === 'voice' || m.type === 'error'));
  await conn.setMicrophone(null);
  mic.getTracks().forEach((t) => t.stop());

  // Speak and listen to the remote track.
  const energyBefore = await energy();
  const sent = performance.now();
  const timer = setInterval(() => {
    analyser.getFloatTimeDomainData(buf);
    if (buf.some((x) => Math.abs(x) > 0.01)) {
      loudMs += 20;
      if (firstLoud === null) firstLoud = performance.now() - sent;
    }
  }, 20);
  conn.send({ type: 'speak', id: 'p1', text: 'Hello from the page, over WebRTC.', voice: { design: 'a bright, friendly voice' } });
  const done = await next((m) => m.id === 'p1' && (m.type === 'done' || m.type === 'error'));
  await new Promise((r) => setTimeout(r, 400)); // the browser's own playout buffer
  clearInterval(timer);
  const trackEnergy = (await energy()) - energyBefore;
  const audioMessages = messages.filter((m) => m.type === 'audio').length;
  conn.close();
  return { voice, done, loudMs, firstLoud, audioMessages, trackEnergy };
}"""


def test_page_rtc_records_and_speaks(live: LiveServer, tmp_path: Path) -> None:
    mic = browser.mic_wav(
        tmp_path / "mic.wav", "Hello, this is my own voice, recorded over a WebRTC track. The birch canoe slid on the smooth planks."
    )
    extra = ("--allow-loopback-in-peer-connection",)
    with browser.launch_chromium(mic, extra_args=extra) as context:
        page = context.new_page()
        errors = browser.console_collector(page)
        page.route("**/v1/rtc/offer", loopback_offer)
        page.goto(live.base_url + "/")
        result = page.evaluate(RUN, TOKEN)
        page.close()
    assert "error" not in result, result
    assert result["voice"]["type"] == "voice", result["voice"]
    assert result["done"]["type"] == "done" and result["done"]["cancelled"] is False, result["done"]
    assert result["audioMessages"] == 0
    # The track carried audible speech for most of the utterance.
    assert result["loudMs"] >= 0.5 * result["done"]["audio_ms"], result
    assert result["trackEnergy"] > 0.01, result  # Chromium's own decoder played it
    print(f"page over WebRTC: first sound {result['firstLoud']:.0f} ms after speak (Chromium, incl. its playout buffer)")
    assert not [e for e in errors if "rtc" in e.lower()], errors
