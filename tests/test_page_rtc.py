"""The talk-back page in WebRTC mode, driven through its own UI in headless Chromium.

The page loads over WebSocket (the desktop default), then the transport switch
in its header picks WebRTC: the page builds an ``RtcConnection``, plays the
speech track in an <audio> element and measures it with an AnalyserNode.
Through the page's buttons: Record sends the fake microphone (a WAV file) over
the track and the voice appears in the library; Speak with a designed voice
is heard (the analyser shows speech; TTFA heard is measured and printed);
Stop silences it mid-utterance. Switching back to WebSocket speaks again, so
both transports' TTFA are measured against the same server. A phone (by its
user agent) gets WebRTC by default.

Loopback only: Chromium leaves loopback out of WebRTC unless
``--allow-loopback-in-peer-connection``; it also gathers on every other
interface, so the page's offer is cut to its 127.0.0.1 UDP candidates by
Playwright on its way to POST /v1/rtc/offer (``loopback_offer``: no test hook
in the page), and the server (``--ice-host 127.0.0.1``) ignores checks from
anything but loopback. No other address is offered to or contacted by it.

Screenshots go to $MINESTREAM_SCREENSHOTS (default: a pytest temporary directory).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import browser
import pytest
from conftest import GUARDED_TOKEN

pytestmark = pytest.mark.skipif(browser.browser_tests_skipped(), reason="MINESTREAM_SKIP_BROWSER=1")
pytest.importorskip("aiortc")

TOKEN = GUARDED_TOKEN  # the shared guarded server's: it offers loopback candidates only
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LOOPBACK = ("--allow-loopback-in-peer-connection",)
LAST = "window.minestream.utterances.at(-1)"
SPOKEN = "Hello from the page, over WebRTC."  # short: both transports play it at real speed
# The <audio> element plays the speech track (it is what a person hears).
PLAYING = "(() => { const el = window.minestream.rtcOut.el; return el.readyState >= 2 && !el.paused && el.srcObject !== null; })()"


def ready_over(transport: str) -> str:
    return f"window.minestream && window.minestream.link.transport === '{transport}' && window.minestream.link.state === 'ready'"


def loopback_offer(route: Any) -> None:
    """Keep only the offer's 127.0.0.1 UDP candidates (Chromium also offers every other interface)."""
    body = json.loads(route.request.post_data or "{}")
    lines = body.get("sdp", "").split("\r\n")
    keep = [line for line in lines if not line.startswith("a=candidate:") or (" udp " in line and " 127.0.0.1 " in line)]
    route.continue_(post_data=json.dumps({**body, "sdp": "\r\n".join(keep)}))


def shots_dir(tmp_path: Path) -> Path:
    env = os.environ.get("MINESTREAM_SCREENSHOTS")
    path = Path(env) if env else tmp_path / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def speak(page, text: str, *, peak: str, errors: list[str], timeout: float = 30000) -> dict[str, Any]:
    """Speak through the UI (Speak button); sample the output while it plays; wait until it has played out."""
    page.fill("#text", text)
    page.click("#speak")
    try:
        page.wait_for_function(f"{LAST} && {LAST}.fig.ttfaHeard !== undefined", timeout=timeout)
    except Exception as exc:  # a page error is the likelier story than a slow server
        raise AssertionError(f"never heard: {errors}") from exc
    peaks = []
    while not page.evaluate(f"{LAST}.finished"):
        peaks.append(page.evaluate(peak))
        time.sleep(0.03)
        if len(peaks) > timeout / 30:
            raise AssertionError("the utterance never finished")
    return {"fig": page.evaluate(f"{LAST}.fig"), "id": page.evaluate(f"{LAST}.id"), "peaks": peaks}


def test_page_switches_to_webrtc_records_speaks_and_stops(guarded_server, tmp_path: Path) -> None:
    live = guarded_server
    shots = shots_dir(tmp_path)
    mic = browser.mic_wav(
        tmp_path / "mic.wav",
        "Hello, this is my own voice, recorded over a WebRTC track. The birch canoe slid on the smooth planks. "
        "Glue the sheet to the dark blue background.",
    )
    with browser.launch_chromium(mic, extra_args=LOOPBACK) as context:
        context.route("**/v1/rtc/offer", loopback_offer)
        page = context.new_page()
        errors = browser.console_collector(page)
        page.goto(f"{live.base_url}/?token={TOKEN}")
        page.wait_for_function(ready_over("websocket"), timeout=15000)
        assert page.is_checked("input[name=transport][value=websocket]")  # desktop default

        # --- the switch: WebRTC, remembered -------------------------------------------
        page.check("input[name=transport][value=webrtc]")
        page.wait_for_function(ready_over("webrtc"), timeout=15000)
        assert page.evaluate("localStorage.getItem('minestream.transport')") == "webrtc"
        assert "over WebRTC" in page.text_content("#conn-text")
        page.wait_for_function(PLAYING, timeout=5000)
        assert page.is_visible("#download-hint")
        page.screenshot(path=shots / "rtc-01-ready.png", full_page=True)

        # --- record a voice over the track with the Record button ------------------------
        page.fill("#clone-name", "RTC microphone")
        page.click("#record")
        page.wait_for_function("document.querySelector('#record').getAttribute('aria-pressed') === 'true'")
        page.wait_for_function("Number(document.querySelector('#level').getAttribute('aria-valuenow')) > 20", timeout=5000)
        page.wait_for_function("parseFloat(document.querySelector('#rec-time').textContent) >= 3.2", timeout=10000)
        assert "the server has" in page.text_content("#clone-status")  # the server records the track as it comes
        page.screenshot(path=shots / "rtc-02-recording.png", full_page=True)
        page.click("#record")
        page.wait_for_function("window.minestream.log.some(e => e.kind === 'voice' || e.kind === 'error')", timeout=20000)
        log = page.evaluate("window.minestream.log")
        assert not [e for e in log if e["kind"] == "error"], log
        begin = next(e for e in log if e["kind"] == "voice_begin")
        assert begin.get("source") == "rtc" and begin.get("mime") is None, begin
        voice_id = next(e["voice_id"] for e in log if e["kind"] == "voice")
        page.wait_for_selector(f"#voices input[value='{voice_id}']:checked")
        assert "RTC microphone" in page.text_content("#voices")
        voice = live.http(headers=AUTH).get(f"/v1/voices/{voice_id}").json()
        assert voice["kind"] == "clone" and voice["duration_ms"] > 2000, voice

        # --- design a voice and speak: heard on the track ------------------------------------
        page.check("#voice-radio-design")
        page.fill("#design", "A bright, friendly voice.")
        energy = "window.minestream.link.conn.pc.getStats().then(s => [...s.values()].find(x => x.type === 'inbound-rtp' && x.kind === 'audio')?.totalAudioEnergy || 0)"
        before = page.evaluate(energy)
        rtc = speak(
            page,
            SPOKEN,
            peak="window.minestream.rtcOut.outputPeak()",
            errors=errors,
        )
        fig = rtc["fig"]
        done = next(e for e in page.evaluate("window.minestream.log") if e["kind"] == "done" and e["id"] == rtc["id"])
        assert done["cancelled"] is False
        assert max(rtc["peaks"]) > 0.05, "the analyser on the speech track saw silence"
        loud = sum(p > 0.01 for p in rtc["peaks"]) / len(rtc["peaks"])
        assert loud > 0.4, f"speech audible in only {loud:.0%} of the samples"
        assert page.evaluate(energy) - before > 0.01  # Chromium's own decoder received it
        assert 0 < fig["ttfaHeard"] < 5000, fig
        assert fig["serverTtfa"] is not None and fig["serverTtfa"] <= fig["ttfaHeard"], fig
        assert fig["chunks"] is None and fig["audioMs"] > 1000, fig  # no audio messages over WebRTC
        assert not [e for e in page.evaluate("window.minestream.log") if e["kind"] == "audio"]
        assert page.text_content("[data-figure=chunks]") == "n/a"
        assert page.text_content("[data-figure=ttfaHeard]").endswith("ms")
        assert page.is_disabled("#download")
        page.screenshot(path=shots / "rtc-03-spoken.png", full_page=True)

        # --- Stop mid-utterance silences it ---------------------------------------------------
        browser.speak_long_until_audible(page, "window.minestream.rtcOut.outputPeak()", LAST)
        page.click("#stop")
        stopped = time.monotonic()
        assert page.evaluate("window.minestream.rtcOut.el.muted")  # what is still in flight is not heard
        uid = page.evaluate(f"{LAST}.id")
        page.wait_for_function(f"window.minestream.log.some(e => e.kind === 'done' && e.id === '{uid}' && e.cancelled)", timeout=5000)
        # The track itself falls silent: the server dropped the rest at once.
        page.wait_for_function("window.minestream.rtcOut.trackPeak() < 1e-3", timeout=1500)
        silent_ms = (time.monotonic() - stopped) * 1000
        time.sleep(0.3)  # an absence needs a window: the track must stay silent, not just dip
        quiet = [page.evaluate("window.minestream.rtcOut.trackPeak()") for _ in range(8)]
        assert max(quiet) < 1e-3, f"still playing after Stop: {quiet}"
        assert page.text_content("#talk-status") == "Stopped." and page.is_disabled("#stop")
        page.screenshot(path=shots / "rtc-04-stopped.png", full_page=True)

        # --- back to WebSocket through the switch, same server: the other TTFA --------------
        page.check("input[name=transport][value=websocket]")
        page.wait_for_function(ready_over("websocket"), timeout=15000)
        assert page.evaluate("localStorage.getItem('minestream.transport')") == "websocket"
        ws = speak(
            page,
            SPOKEN,
            peak="window.minestream.player.outputPeak()",
            errors=errors,
        )
        assert max(ws["peaks"]) > 0.05
        page.close()
        assert not errors, errors

        # --- a phone gets WebRTC by default ---------------------------------------------------
        iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
        phone = context.browser.new_context(ignore_https_errors=True, user_agent=iphone, viewport={"width": 390, "height": 844})
        try:
            phone.route("**/v1/rtc/offer", loopback_offer)
            page = phone.new_page()
            errors = browser.console_collector(page)
            page.goto(f"{live.base_url}/?token={TOKEN}")
            page.wait_for_function(ready_over("webrtc"), timeout=15000)
            assert page.is_checked("input[name=transport][value=webrtc]")
            page.wait_for_function(PLAYING, timeout=5000)
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            page.screenshot(path=shots / "rtc-05-phone.png", full_page=True)
            page.close()
            assert not errors, errors
        finally:
            phone.close()

    live.http(headers=AUTH).delete(f"/v1/voices/{voice_id}")
    print(
        f"\nTTFA heard in Chromium, same server and text: WebRTC {fig['ttfaHeard']:.0f} ms (server TTFA {fig['serverTtfa']} ms, "
        f"underruns {fig['underruns']}), WebSocket {ws['fig']['ttfaHeard']:.0f} ms (server TTFA {ws['fig']['serverTtfa']} ms); "
        f"track silent {silent_ms:.0f} ms after Stop; screenshots: {shots}"
    )
