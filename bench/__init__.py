"""MineStream's benchmark client: ``python -m bench``.

It answers two questions people ask of a streaming TTS server: how soon the
first sound comes, and whether playback ever stutters when many people use it
at once. It drives N concurrent sessions over the protocol (wss; WebRTC once a
transport for it exists) or straight into the engine (``--engine-direct``),
in a ramp of concurrency levels or at one level, and writes every sample, a
Markdown table and PNG plots. See ``python -m bench --help``.

Modules: ``corpus`` (the sentence set), ``transport`` (wss), ``engine_direct``,
``player`` (jitter buffer and underruns), ``load`` (sessions, load models,
levels), ``stats``, ``probe`` (environment, CPU, server metrics), ``report``,
``plots``, ``compare``. ``ingest``, ``rtc`` and ``qwen_engine`` are separate
benchmarks and helpers.
"""
