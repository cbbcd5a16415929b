"""The talk-back page in a real browser, against the real server over TLS.

Headless Debian Chromium driven by Playwright, with a fake microphone reading a
WAV file (see tests/browser.py). The page exposes ``window.minestream`` (its
connection, player, a message log and per-utterance figures) which the tests
read instead of scraping text where numbers matter.

Screenshots of the main states go to $MINESTREAM_SCREENSHOTS (default: a pytest
temporary directory, printed at the end); the TTFA heard in the browser is
printed and written there as figures.json.
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import browser
import pytest

pytestmark = pytest.mark.skipif(browser.browser_tests_skipped(), reason="MINESTREAM_SKIP_BROWSER=1")

FIGURES: dict[str, Any] = {}

LAST = "window.minestream.utterances.at(-1)"
READY = "window.minestream && window.minestream.conn.state === 'ready'"


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    env = os.environ.get("MINESTREAM_SCREENSHOTS")
    path = Path(env) if env else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    yield path
    (path / "figures.json").write_text(json.dumps(FIGURES, indent=2))
    print(f"\npage screenshots and figures: {path}\n{json.dumps(FIGURES, indent=2)}")


@pytest.fixture(scope="module")
def mic_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About eight seconds of speech: the fake microphone, and a file to upload."""
    return browser.mic_wav(
        tmp_path_factory.mktemp("mic") / "mic.wav",
        "Hello, this is my own voice. I am reading a few sentences so that the server can learn how I sound. "
        "The birch canoe slid on the smooth planks.",
    )


@pytest.fixture(scope="module")
def chromium(mic_file: Path):
    """One browser whose microphone reads ``mic_file``."""
    with browser.launch_chromium(mic_file) as context:
        yield context


@pytest.fixture
def page(chromium, server):
    page = chromium.new_page()
    errors = browser.console_collector(page)
    page.goto(server.base_url + "/")
    page.wait_for_function(READY, timeout=15000)
    yield page
    page.close()
    assert not errors, errors


def speak_and_wait(page, text: str, *, timeout: float = 30000) -> dict[str, Any]:
    """Press Ctrl+Enter in the text box and wait until the utterance has played out."""
    page.fill("#text", text)
    page.focus("#text")
    page.keyboard.press("Control+Enter")
    # While it plays, the AnalyserNode after the worklet must see real signal.
    page.wait_for_function(f"{LAST} && {LAST}.fig.ttfaHeard !== undefined", timeout=timeout)
    peaks = browser.sample(page, "window.minestream.player.outputPeak()")
    page.wait_for_function(f"{LAST}.finished", timeout=timeout)
    result = page.evaluate(f"({{ fig: {LAST}.fig, maxPeak: window.minestream.player.stats.maxPeak, id: {LAST}.id }})")
    result["analyserPeak"] = max(peaks)
    return result


def test_page_shows_engine_and_speaks_a_designed_voice(page, server, shots):
    health = server.http().get("/healthz").json()
    assert page.text_content("#engine-name") == health["engine"]["name"]
    assert page.is_visible("#engine-note")
    assert page.text_content("#engine-note") == health["engine"]["note"]
    assert page.evaluate("window.isSecureContext")
    page.screenshot(path=shots / "01-ready.png", full_page=True)

    page.fill("#design", "A bright, fast-talking young man with a cheerful tone.")
    result = speak_and_wait(page, "Hello! The audio starts while the rest is still being generated.")
    fig = result["fig"]
    FIGURES["designed"] = fig
    print(
        f"designed voice: TTFA heard {fig['ttfaHeard']:.0f} ms, first chunk {fig['firstChunk']:.0f} ms, "
        f"server TTFA {fig['serverTtfa']} ms, RTF {fig['rtf']}, chunks {fig['chunks']}, underruns {fig['underruns']}"
    )
    assert result["maxPeak"] > 0.05, "the worklet played no audible samples"
    assert result["analyserPeak"] > 0.01, "the AnalyserNode after the worklet saw silence"
    assert 0 < fig["ttfaHeard"] < 5000
    assert fig["firstChunk"] <= fig["ttfaHeard"]  # heard after it arrived: jitter buffer + output latency
    assert fig["chunks"] >= 1 and fig["audioMs"] > 1000
    assert page.text_content("[data-figure=ttfaHeard]").endswith("ms")
    page.screenshot(path=shots / "02-spoken.png", full_page=True)

    # The WAV download holds what was received: 24 kHz mono 16-bit.
    with page.expect_download() as dl:
        page.click("#download")
    data = Path(dl.value.path()).read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert struct.unpack_from("<HHI", data, 20) == (1, 1, 24000)
    assert abs((len(data) - 44) / 48 - fig["audioMs"]) < 50

    # Readable on a phone: one column, nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=shots / "03-phone.png", full_page=True)


def test_text_streams_in_word_by_word(page):
    page.check("#stream-demo")
    result = speak_and_wait(page, "Words arrive one at a time, then speech.")
    log = page.evaluate("window.minestream.log")
    assert result["maxPeak"] > 0.05
    FIGURES["streamed_text"] = result["fig"]
    assert any(e["kind"] == "audible" and e["id"] == result["id"] for e in log)


def test_record_clone_then_speak_with_it(page, server, shots):
    page.fill("#clone-name", "Test microphone")
    page.click("#record")
    page.wait_for_function("document.querySelector('#record').getAttribute('aria-pressed') === 'true'")
    # The meter moves: the page hears the (fake) microphone.
    page.wait_for_function("Number(document.querySelector('#level').getAttribute('aria-valuenow')) > 20", timeout=5000)
    page.wait_for_function("parseFloat(document.querySelector('#rec-time').textContent) >= 5.5", timeout=10000)
    page.screenshot(path=shots / "04-recording.png", full_page=True)
    # Slices reach the server while recording: it reports decoded audio before Stop.
    assert "the server has" in page.text_content("#clone-status")
    page.click("#record")

    page.wait_for_function("window.minestream.log.some(e => e.kind === 'voice')", timeout=20000)
    log = page.evaluate("window.minestream.log")
    begin = next(e for e in log if e["kind"] == "voice_begin")
    assert begin["mime"].startswith("audio/webm")
    voice_id = next(e["voice_id"] for e in log if e["kind"] == "voice")
    page.wait_for_selector(f"#voices input[value='{voice_id}']:checked")
    assert "Test microphone" in page.text_content("#voices")
    page.screenshot(path=shots / "05-cloned.png", full_page=True)

    try:
        result = speak_and_wait(page, "Now I speak with the voice you just recorded.")
        assert result["maxPeak"] > 0.05
        FIGURES["cloned"] = result["fig"]
        print(f"cloned voice: TTFA heard {result['fig']['ttfaHeard']:.0f} ms")

        # The reference plays back (fetched with the token header, then an <audio>).
        page.click("button[aria-label='Play the reference of Test microphone']")
        page.wait_for_function("window.minestream.library.playing && !window.minestream.library.playing.audio.paused", timeout=5000)
        page.click("button[aria-label='Play the reference of Test microphone']")  # stops it
        assert page.evaluate("window.minestream.library.playing") is None

        # Rename through the library UI (keyboard: type, Enter).
        page.click("button[aria-label='Rename Test microphone']")
        page.fill(f"#rename-{voice_id}", "Renamed mic")
        page.keyboard.press("Enter")
        page.wait_for_function("document.querySelector('#voices').textContent.includes('Renamed mic')")
        assert server.http().get(f"/v1/voices/{voice_id}").json()["name"] == "Renamed mic"

        # Delete it again (the shared server must be left as it was found).
        page.once("dialog", lambda d: d.accept())
        page.click("button[aria-label='Delete Renamed mic']")
        page.wait_for_function(f"!document.querySelector(\"#voices input[value='{voice_id}']\")")
        assert server.http().get(f"/v1/voices/{voice_id}").status_code == 404
    finally:
        server.http().delete(f"/v1/voices/{voice_id}")


def test_stop_cuts_playback_and_generation(page, shots):
    browser.speak_long_until_audible(page, "window.minestream.player.outputPeak()", LAST)
    page.click("#stop")
    stopped = time.monotonic()
    page.wait_for_function("window.minestream.player.stats.state === 'idle'", timeout=2000)
    # The analyser still holds its last 2048 frames; once it empties, it must stay empty.
    page.wait_for_function("window.minestream.player.outputPeak() < 1e-4", timeout=1000)
    quiet = browser.sample(page, "window.minestream.player.outputPeak()", n=10, interval=0.03)
    assert max(quiet) < 1e-4, f"still playing after Stop: {quiet}"
    assert time.monotonic() - stopped < 1.5

    uid = page.evaluate(f"{LAST}.id")
    page.wait_for_function(f"window.minestream.log.some(e => e.kind === 'done' && e.id === '{uid}')", timeout=5000)
    # An absence needs a window: audio for this id, were any still queued, would come within it.
    time.sleep(0.7)
    log = [e for e in page.evaluate("window.minestream.log") if e.get("id") == uid]
    kinds = [e["kind"] for e in log]
    done = kinds.index("done")
    assert log[done]["cancelled"] is True
    assert "audio" not in kinds[done + 1 :], "audio arrived after done(cancelled)"
    assert kinds.index("cancel") < done
    assert page.text_content("#talk-status") == "Stopped."
    assert page.is_disabled("#stop")
    page.screenshot(path=shots / "06-stopped.png", full_page=True)


def test_refused_microphone_is_explained(server, shots):
    with browser.launch_chromium(None, deny_microphone=True) as context:
        page = context.new_page()
        page.goto(server.base_url + "/")
        page.wait_for_function(READY, timeout=15000)
        page.click("#record")
        page.wait_for_function("document.querySelector('#clone-status').dataset.kind === 'error'", timeout=10000)
        assert "refused" in page.text_content("#clone-status")
        assert page.get_attribute("#record", "aria-pressed") == "false"
        page.screenshot(path=shots / "07-mic-refused.png", full_page=True)


def test_every_control_is_labelled_and_focusable(page):
    unlabeled = page.evaluate(
        """() => [...document.querySelectorAll('button, input, select, textarea, canvas, [role=meter]')]
            .filter(el => !el.closest('[hidden]'))
            .filter(el => !(el.getAttribute('aria-label') || (el.labels && el.labels.length) || el.textContent.trim()))
            .map(el => el.outerHTML.slice(0, 80))"""
    )
    assert unlabeled == []
    # Keyboard: Tab from the top reaches Speak, and Enter on it speaks.
    seen = []
    for _ in range(20):
        page.keyboard.press("Tab")
        seen.append(page.evaluate("document.activeElement.id"))
        if seen[-1] == "speak":
            break
    assert "speak" in seen, seen


def test_resampler_is_seamless_across_chunks(page):
    """24 kHz to the context rate in random-sized chunks equals one-shot output and the ideal signal."""
    result = page.evaluate(
        """async () => {
          const { Resampler } = await import('/resampler.js');
          const out = {};
          for (const rate of [44100, 48000]) {
            const n = 24000, x = new Float32Array(n);
            for (let i = 0; i < n; i++) x[i] = 0.5 * Math.sin(2 * Math.PI * 440 * i / 24000) + 0.3 * Math.sin(2 * Math.PI * 5000 * i / 24000);
            const whole = new Resampler(24000, rate).process(x);
            const r = new Resampler(24000, rate); const parts = []; let i = 0, seed = 7;
            while (i < n) { seed = (seed * 16807) % 2147483647; const k = 1 + seed % 2400; parts.push(...r.process(x.subarray(i, i + k))); i += k; }
            let diff = 0, err = 0;
            for (let k = 0; k < whole.length; k++) diff = Math.max(diff, Math.abs(whole[k] - parts[k]));
            for (let k = 100; k < whole.length - 100; k++) {
              const t = k / rate, ideal = 0.5 * Math.sin(2 * Math.PI * 440 * t) + 0.3 * Math.sin(2 * Math.PI * 5000 * t);
              err = Math.max(err, Math.abs(whole[k] - ideal));
            }
            out[rate] = { diff, err, len: parts.length };
          }
          return out;
        }"""
    )
    for rate, r in result.items():
        assert r["diff"] == 0, (rate, r)
        assert r["err"] < 1e-3, (rate, r)


def test_worklet_has_no_clicks_at_seams_or_underruns(page):
    """Render the player worklet offline: uneven chunks, then a dry queue, must stay click-free."""
    result = page.evaluate(
        """async () => {
          const rate = 48000, ctx = new OfflineAudioContext(1, rate, rate);
          await ctx.audioWorklet.addModule('/player-worklet.js');
          const node = new AudioWorkletNode(ctx, 'minestream-player', { numberOfInputs: 0, outputChannelCount: [1], processorOptions: { startMs: 80 } });
          node.connect(ctx.destination);
          const events = [];
          node.port.onmessage = (e) => { if (e.data.type !== 'stats') events.push(e.data.type); };
          // 0.4 s of a 440 Hz sine in chunks of uneven sizes, then nothing: an underrun.
          node.port.postMessage({ type: 'begin', id: 'x' });
          const sizes = [1000, 37, 2500, 128, 777, 4096, 5000];
          let i = 0, s = 0; const total = 0.4 * rate;
          while (i < total) {
            const k = Math.min(total - i, sizes[s++ % sizes.length]);
            const c = new Float32Array(k);
            for (let j = 0; j < k; j++) c[j] = 0.5 * Math.sin(2 * Math.PI * 440 * (i + j) / rate);
            node.port.postMessage({ type: 'push', samples: c });
            i += k;
          }
          // Make sure the messages are delivered before rendering starts.
          await new Promise((r) => setTimeout(r, 200));
          const buf = await ctx.startRendering();
          await new Promise((r) => setTimeout(r, 200));
          const y = buf.getChannelData(0);
          let jump = 0, peak = 0, nonzero = 0;
          for (let k = 1; k < y.length; k++) { jump = Math.max(jump, Math.abs(y[k] - y[k - 1])); peak = Math.max(peak, Math.abs(y[k])); if (y[k]) nonzero++; }
          return { jump, peak, nonzero, events };
        }"""
    )
    # A 440 Hz sine of amplitude 0.5 moves at most 0.029 per sample at 48 kHz;
    # a seam or a hard stop would jump by up to 0.5.
    assert result["peak"] > 0.45, result
    assert result["jump"] < 0.035, result
    assert result["nonzero"] > 0.35 * 48000, result
    assert "audible" in result["events"] and "underrun" in result["events"], result


def test_upload_a_recording(page, server, mic_file):
    page.fill("#clone-name", "Uploaded file")
    page.set_input_files("#upload", str(mic_file))
    page.wait_for_function("document.querySelector('#clone-status').dataset.kind === 'ok'", timeout=20000)
    voice = next(v for v in server.http().get("/v1/voices").json()["voices"] if v["name"] == "Uploaded file")
    try:
        assert voice["kind"] == "clone" and voice["duration_ms"] > 3000
        page.wait_for_selector(f"#voices input[value='{voice['id']}']:checked")
    finally:
        server.http().delete(f"/v1/voices/{voice['id']}")


def test_save_designed_voice_to_library(page, server):
    page.fill("#design", "An old sailor with a deep, gravelly voice.")
    page.fill("#design-name", "Old sailor")
    page.click("#design-save")
    page.wait_for_function("document.querySelector('#design-status').dataset.kind === 'ok'", timeout=30000)
    voice = next(v for v in server.http().get("/v1/voices").json()["voices"] if v["name"] == "Old sailor")
    try:
        assert voice["kind"] == "design"
        page.wait_for_selector(f"#voices input[value='{voice['id']}']:checked")
        assert "Old sailor" in page.text_content("#voice-current")
        result = speak_and_wait(page, "Ahoy. I was saved in the library.")
        assert result["maxPeak"] > 0.05
    finally:
        server.http().delete(f"/v1/voices/{voice['id']}")


def test_token_prompt_when_the_server_needs_one(guarded_server, shots):
    """No token: the page asks for one, keeps it, and connects; ?token= in the URL is taken and hidden."""
    live, token = guarded_server, guarded_server.token
    # A browser of its own (a fresh profile: no token kept from another test).
    with browser.launch_chromium(None) as context:
        page = context.new_page()
        page.goto(live.base_url + "/")
        page.wait_for_selector("#token-form:not([hidden])", timeout=15000)
        assert page.get_attribute("#conn", "data-state") == "unauthorized"
        assert page.evaluate("document.activeElement.id") == "token-input"
        page.screenshot(path=shots / "08-token-prompt.png", full_page=True)
        page.fill("#token-input", token)
        page.keyboard.press("Enter")
        page.wait_for_function(READY, timeout=15000)
        assert page.is_hidden("#token-form")
        assert page.evaluate("localStorage.getItem('minestream.token')") == token

        page.evaluate("localStorage.clear()")
        page.goto(live.base_url + f"/?token={token}")
        page.wait_for_function(READY, timeout=15000)
        assert "token" not in page.url
        assert page.evaluate("localStorage.getItem('minestream.token')") == token
