"""Prometheus metrics, served at ``GET /metrics``.

The benchmark (``python -m bench``) reads these too: the server's CPU
(``process_cpu_seconds_total``, from the default process collector), peak
queue depth and active utterances while a level runs.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info, disable_created_metrics

from .errors import error_codes

# A _created series per counter doubles what a scrape carries and is read by nobody.
disable_created_metrics()

# Fine below 100 ms, where the targets are (40 ms server TTFA for a short sentence).
_LATENCY = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)

BUILD = Info("minestream_build", "The running build: version and engine")
TTFA = Histogram("minestream_ttfa_seconds", "Server-side time from a request to its first audio, socket and HTTP", ["path"], buckets=_LATENCY)
RTF = Histogram(
    "minestream_rtf_ratio",
    "Generation wall time over audio duration, per finished utterance",
    ["path"],
    buckets=(0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0),
)
UTTERANCES = Counter("minestream_utterances_total", "Utterances started (path: socket or http)", ["path"])
AUDIO = Counter("minestream_audio_seconds_total", "Seconds of audio generated and sent", ["path"])
ACTIVE_SESSIONS = Gauge("minestream_active_sessions", "Sessions that said hello (WebSocket and WebRTC)")
ACTIVE_UTTERANCES = Gauge("minestream_active_utterances", "Utterances being generated")
QUEUE_DEPTH = Gauge("minestream_engine_queue_depth", "Engine jobs waiting for a worker")
DECODE_SECONDS = Histogram("minestream_decode_seconds", "Reference decode time per upload", buckets=_LATENCY)
ERRORS = Counter("minestream_errors_total", "Errors reported to clients, by protocol code", ["code"])


# Every known code from the start at 0, so a rate() over a scrape window works
# before the first error of a kind (an absent series reads as "no data").
for _code in error_codes():
    ERRORS.labels(_code)
for _path in ("socket", "http"):
    for _metric in (TTFA, RTF, UTTERANCES, AUDIO):
        _metric.labels(_path)
QUEUE_WAIT = Histogram(
    "minestream_engine_queue_wait_seconds", "Time an engine job waited for a worker", buckets=_LATENCY
)
