"""Re-record the ingest test corpus (tests/corpus/). Run by hand, not in CI.

    python tests/record_corpus.py            # browser recordings + PyAV-made files
    python tests/record_corpus.py --pyav     # only the PyAV-made files

Browser recordings come from headless Chromium (Debian's /usr/bin/chromium,
driven by Playwright) with a fake microphone that plays an espeak-ng WAV.
MediaRecorder runs with timeslices of 100, 250 and 1000 ms in each supported
MIME type, and every piece is kept exactly as the browser handed it over:
``<name>/recording.<ext>`` is the pieces concatenated (a valid file) and
``<name>/index.json`` lists the piece sizes, so tests can replay the upload
piece by piece. Needs: chromium, espeak-ng (apt), playwright (pip).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import av
import numpy as np

CORPUS = Path(__file__).parent / "corpus"
CHROMIUM = "/usr/bin/chromium"
TEXT = ("Hello, this is a test recording for voice cloning. "
        "The quick brown fox jumps over the lazy dog, twice a day.")
RECORD_S = 4.0
TIMESLICES = (100, 250, 1000)
MIME_TYPES = {"audio/webm;codecs=opus": ("webm-opus", "webm"), "audio/mp4": ("mp4", "mp4")}
ORIGIN = "http://localhost:8765"  # getUserMedia needs a secure context; localhost is one

PAGE = """<!doctype html><script>
async function record(mime, timeslice, ms) {
  if (!MediaRecorder.isTypeSupported(mime)) return null;
  const stream = await navigator.mediaDevices.getUserMedia({audio: {channelCount: 2}});
  const rec = new MediaRecorder(stream, {mimeType: mime});
  window.lastChannels = stream.getAudioTracks()[0].getSettings().channelCount;
  const pieces = [];
  const done = new Promise(resolve => rec.onstop = resolve);
  // Pieces are read asynchronously; index them so order is as sent.
  rec.ondataavailable = e => pieces.push(e.data.arrayBuffer());
  rec.start(timeslice);
  await new Promise(r => setTimeout(r, ms));
  rec.stop();
  await done;
  stream.getTracks().forEach(t => t.stop());
  const bufs = await Promise.all(pieces);
  return {mime: rec.mimeType, channels: window.lastChannels, pieces: bufs.map(b => {
    let s = ''; const u = new Uint8Array(b);
    for (let i = 0; i < u.length; i++) s += String.fromCharCode(u[i]);
    return btoa(s);
  })};
}
</script>"""


def speech_wav(path: Path) -> None:
    """espeak-ng speech at 48 kHz stereo, -6 dB, like a real microphone."""
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-w", str(raw), TEXT], check=True)
    subprocess.run(["sox", str(raw), "-r", "48000", "-c", "2", str(path), "vol", "0.5"], check=True)


async def record_browser(wav: Path) -> None:
    from playwright.async_api import async_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            "--disable-quic", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}"]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=args)
        context = await browser.new_context(permissions=["microphone"])
        await context.route(f"{ORIGIN}/**", lambda route: route.fulfill(
            status=200, content_type="text/html", body=PAGE))
        page = await context.new_page()
        await page.goto(f"{ORIGIN}/record")
        for mime, (label, ext) in MIME_TYPES.items():
            for slice_ms in TIMESLICES:
                got = await page.evaluate("([m, t, ms]) => record(m, t, ms)",
                                          [mime, slice_ms, int(RECORD_S * 1000)])
                if got is None:
                    print(f"skip {mime}: not supported by this Chromium")
                    break
                pieces = [base64.b64decode(p) for p in got["pieces"]]
                save(f"chrome-{label}-{slice_ms}ms", ext, pieces, got["mime"], slice_ms)
                print(f"  track channelCount: {got['channels']}")
        await browser.close()


def save(name: str, ext: str, pieces: list[bytes], mime: str, slice_ms: int | None) -> None:
    out = CORPUS / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / f"recording.{ext}").write_bytes(b"".join(pieces))
    index = {"mime": mime, "timeslice_ms": slice_ms, "file": f"recording.{ext}",
             "pieces": [len(p) for p in pieces]}
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    print(f"{name}: {len(pieces)} pieces, {sum(map(len, pieces))} bytes, {mime}")


def load_pcm(wav: Path, seconds: float) -> np.ndarray:
    with av.open(str(wav)) as c:
        pcm = np.concatenate([f.to_ndarray()[0] for f in c.decode(audio=0)])
    return pcm[: int(seconds * 48000)].astype(np.float32) / 32768


def encode(pcm: np.ndarray, fmt: str, codec: str, rate: int, options: dict[str, str]) -> bytes:
    """Encode 48 kHz mono PCM with PyAV."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt, options=options) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm[None], format="fltp", layout="mono")
        frame.sample_rate = 48000
        ctx = stream.codec_context
        rs = av.AudioResampler(format=ctx.format, layout="mono", rate=rate,
                               frame_size=ctx.frame_size or None)
        for f in rs.resample(frame) + rs.resample(None):
            out.mux(stream.encode(f))
        out.mux(stream.encode(None))
    return buf.getvalue()


PYAV_FILES = {  # name: (container, codec, rate, options, ext, mime)
    "pyav-ogg-opus": ("ogg", "libopus", 48000, {}, "ogg", "audio/ogg;codecs=opus"),
    "pyav-fmp4-aac": ("mp4", "aac", 44100,
                      {"movflags": "frag_keyframe+empty_moov+default_base_moof",
                       "frag_duration": "250000"}, "m4a", "audio/mp4"),
    "pyav-mp4-aac": ("mp4", "aac", 44100, {}, "m4a", "audio/mp4"),
    "pyav-flac": ("flac", "flac", 48000, {}, "flac", "audio/flac"),
    "pyav-mp3": ("mp3", "libmp3lame", 44100, {}, "mp3", "audio/mpeg"),
    "pyav-wav": ("wav", "pcm_s16le", 24000, {}, "wav", "audio/wav"),
}


def make_pyav_files(wav: Path) -> None:
    pcm = load_pcm(wav, 3.0)
    for name, (fmt, codec, rate, options, ext, mime) in PYAV_FILES.items():
        data = encode(pcm, fmt, codec, rate, options)
        # Uploaded in 4 KB pieces, a typical WebSocket sender's choice.
        save(name, ext, [data[i : i + 4096] for i in range(0, len(data), 4096)], mime, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pyav", action="store_true", help="only the PyAV-made files")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        speech_wav(wav)
        make_pyav_files(wav)
        if not args.pyav:
            asyncio.run(record_browser(wav))


if __name__ == "__main__":
    main()
