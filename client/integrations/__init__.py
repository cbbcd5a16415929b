"""MineStream inside voice-agent frameworks, over protocol v1.

- ``client.integrations.pipecat``: ``MineStreamTTSService``, a Pipecat
  ``WebsocketTTSService`` (``pip install minestream[pipecat]``; docs/pipecat.md).
- ``client.integrations.livekit``: ``TTS``, a LiveKit Agents ``tts.TTS`` plugin
  (``pip install minestream[livekit]``; docs/livekit.md).
- ``client.integrations.pool``: the sessions the LiveKit plugin and the
  Wyoming bridge (``server.wyoming``) share among their utterances.
- ``client.integrations.pipecat_example``: a runnable Pipecat pipeline.

Each framework module imports its framework, so importing this package alone
needs none of them.
"""
