"""Headless Chromium for page tests: Debian's browser driven by Playwright.

No browser is downloaded: Playwright drives ``/usr/bin/chromium`` (install it with
``apt-get install -y chromium``; override the path with ``MINESTREAM_CHROMIUM``).
The microphone is fake: Chromium reads it from a WAV file, and the permission
prompt is either auto-accepted (fake media UI) or refused.

    with launch_chromium(mic_wav(tmp / "mic.wav", "Hello there")) as ctx:
        page = ctx.new_page()
        page.goto(url)

Usable by any page test (the talk-back page, a WebRTC page...).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path(os.environ.get("MINESTREAM_CHROMIUM", "/usr/bin/chromium"))

BASE_ARGS = (
    "--no-sandbox",  # containers run as root without user namespaces
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-device-for-media-stream",
)


def chromium_available() -> bool:
    """Debian's Chromium and the Playwright package are both present."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return CHROMIUM.exists()


def skip_reason() -> str:
    return f"needs Playwright and Chromium at {CHROMIUM} (apt-get install -y chromium)"


def browser_tests_skipped() -> bool:
    """Browser tests run wherever the test command ran; only an explicit opt-out skips them.

    A missing browser is a broken setup (tests/run.sh installs it), so it fails
    loudly rather than passing by skipping.
    """
    if os.environ.get("MINESTREAM_SKIP_BROWSER") == "1":
        return True
    if not chromium_available():
        raise RuntimeError(skip_reason() + "; run the suite with tests/run.sh, or set MINESTREAM_SKIP_BROWSER=1 to skip")
    return False


def mic_wav(path: Path, text: str, *, rate: int = 48000, lead_silence_s: float = 0.3) -> Path:
    """Speech for the fake microphone: espeak-ng, converted by sox to mono 16-bit.

    Chromium loops the file, so a little silence at the start keeps the seam quiet.
    """
    if not shutil.which("espeak-ng") or not shutil.which("sox"):
        raise RuntimeError("mic_wav needs espeak-ng and sox (apt-get install -y espeak-ng sox)")
    raw = path.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run(
        ["sox", str(raw), "-r", str(rate), "-c", "1", "-b", "16", str(path), "pad", str(lead_silence_s), "0.3"],
        check=True,
        capture_output=True,
    )
    raw.unlink(missing_ok=True)
    return path


def chromium_args(fake_audio_wav: Path | None = None, deny_microphone: bool = False) -> list[str]:
    args = list(BASE_ARGS)
    if fake_audio_wav is not None:
        args.append(f"--use-file-for-fake-audio-capture={fake_audio_wav}")
    if deny_microphone:
        # No fake UI: the permission request goes to a prompt, and headless
        # Chromium with this flag answers every prompt with "block".
        args.append("--deny-permission-prompts")
    else:
        args.append("--use-fake-ui-for-media-stream")
    return args


@contextmanager
def launch_chromium(
    fake_audio_wav: Path | None = None,
    deny_microphone: bool = False,
    *,
    headless: bool = True,
    extra_args: tuple[str, ...] = (),
    viewport: dict[str, int] | None = None,
    device_scale_factor: float | None = None,
):
    """A fresh Playwright ``BrowserContext`` in headless Debian Chromium.

    ``fake_audio_wav`` becomes the microphone; ``deny_microphone`` makes
    getUserMedia fail with NotAllowedError, as when a person refuses the prompt.
    Certificate errors are ignored, so the server's test CA need not be installed.
    """
    pw = _acquire_playwright()
    try:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=headless,
            args=[*chromium_args(fake_audio_wav, deny_microphone), *extra_args],
        )
        try:
            options: dict = {"ignore_https_errors": True}
            if viewport:
                options["viewport"] = viewport
            if device_scale_factor:
                options["device_scale_factor"] = device_scale_factor
            context = browser.new_context(**options)
            if not deny_microphone:
                context.grant_permissions(["microphone"])
            try:
                yield context
            finally:
                context.close()
        finally:
            browser.close()
    finally:
        _release_playwright()


# One Playwright driver shared by nested launches: the sync API cannot nest, and
# browsers with different flags (fake microphone, refused microphone) are often
# open at the same time. It stops when the last launch ends, because while it
# runs its event loop counts as "running" and would break asyncio tests.
_PLAYWRIGHT = None
_USERS = 0


def _acquire_playwright():
    global _PLAYWRIGHT, _USERS
    if _PLAYWRIGHT is None:
        from playwright.sync_api import sync_playwright

        _PLAYWRIGHT = sync_playwright().start()
    _USERS += 1
    return _PLAYWRIGHT


def _release_playwright() -> None:
    global _PLAYWRIGHT, _USERS
    _USERS -= 1
    if _USERS == 0 and _PLAYWRIGHT is not None:
        _PLAYWRIGHT.stop()
        _PLAYWRIGHT = None


def console_collector(page) -> list[str]:
    """Collect the page's console errors and uncaught exceptions (for asserts and logs)."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    return errors


def sample(page: Any, expression: str, n: int = 8, interval: float = 0.04) -> list[Any]:
    """Evaluate ``expression`` ``n`` times, ``interval`` seconds apart (a level over a stretch of playback)."""
    values = []
    for _ in range(n):
        values.append(page.evaluate(expression))
        time.sleep(interval)
    return values


LONG_TEXT = "This is a long text that keeps going, so that it can be stopped in the middle. " * 6


def speak_long_until_audible(page: Any, peak: str, last: str) -> None:
    """Speak a long text and return once its audio is really coming out (``peak`` is a JS expression)."""
    page.fill("#text", LONG_TEXT)
    page.click("#speak")
    page.wait_for_function(f"{last} && {last}.fig.ttfaHeard !== undefined", timeout=30000)
    page.wait_for_function(f"{peak} > 0.01", timeout=5000)
