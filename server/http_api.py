"""The HTTP API: the voice library, health, CA, metrics (OpenAI's speech endpoint is ``openai_speech``)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import prometheus_client
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from .auth import require_token
from .errors import BadMessage, MineStreamError, TooLarge, VoiceNotFound
from .ingest import decode_bytes
from .reference import prepare_reference
from .state import ServerState
from .tls import CA_CERT

MAX_UPLOAD_BYTES = 25 << 20


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.minestream
    return state


def error_response(exc: MineStreamError) -> JSONResponse:
    # A body refused mid-stream is still coming: close the connection rather than read the rest.
    headers = {"Connection": "close"} if isinstance(exc, TooLarge) else None
    return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, status_code=exc.http_status, headers=headers)


async def json_body(request: Request) -> dict[str, Any]:
    """The JSON object in the body (its size is bounded while it streams: ``server.bodies``)."""
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        # A form or text/plain body is what a foreign page can send without asking: never JSON here.
        raise BadMessage("send the body as JSON with Content-Type: application/json")
    body = await request.body()
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise BadMessage("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadMessage("the body must be a JSON object")
    return data


# --- voices -----------------------------------------------------------------------


async def list_voices(request: Request) -> Response:
    require_token(request)
    voices = await _state(request).library.all()
    return JSONResponse({"voices": [v.as_dict() for v in voices]})


async def get_voice(request: Request) -> Response:
    require_token(request)
    record = await _state(request).library.get(request.path_params["voice_id"])
    return JSONResponse(record.as_dict())


async def rename_voice(request: Request) -> Response:
    require_token(request)
    data = await json_body(request)
    if not isinstance(data.get("name"), str):
        raise BadMessage("'name' is required")
    record = await _state(request).library.rename(request.path_params["voice_id"], data["name"])
    return JSONResponse(record.as_dict())


async def delete_voice(request: Request) -> Response:
    require_token(request)
    await _state(request).library.delete(request.path_params["voice_id"])
    return Response(status_code=204)


async def voice_audio(request: Request) -> Response:
    require_token(request)
    library = _state(request).library
    record = await library.get(request.path_params["voice_id"])
    wav = await library.audio(record)
    if wav is None:
        raise VoiceNotFound(f"voice {record.id} has no reference audio")
    return Response(wav, media_type="audio/wav", headers={"Content-Disposition": f'attachment; filename="{record.id}.wav"'})


async def create_voice(request: Request) -> Response:
    """Multipart {file, name, ref_text} clones; JSON {name, design} saves a design."""
    require_token(request)
    state = _state(request)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        record = await _create_clone(request, state)
    else:
        data = await json_body(request)
        design = data.get("design")
        if not isinstance(design, str) or not design.strip():
            raise BadMessage("'design' (a description) is required, or upload a recording as multipart 'file'")
        reference = await state.engine.render_design(design, str(data.get("language") or "auto"))
        record = await state.library.save(
            name=str(data.get("name") or ""),
            kind="design",
            design=design,
            audio=None if reference is None else reference.audio,
            ref_text=None if reference is None else reference.text,
        )
    return JSONResponse(record.as_dict(), status_code=201)


async def _create_clone(request: Request, state: ServerState) -> Any:
    async with request.form(max_files=1, max_fields=8, max_part_size=MAX_UPLOAD_BYTES) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise BadMessage("multipart field 'file' (the recording) is required")
        data = await upload.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise TooLarge(f"uploads are limited to {MAX_UPLOAD_BYTES >> 20} MiB")
        name, ref_text = form.get("name"), form.get("ref_text")
        mime = upload.content_type
    max_seconds = state.settings.limits.max_ref_seconds
    pcm = await decode_bytes(data, mime, max_seconds=max_seconds)
    audio = await asyncio.to_thread(prepare_reference, pcm, max_seconds=max_seconds)
    return await state.library.save(
        name=name if isinstance(name, str) else "",
        kind="clone",
        audio=audio,
        ref_text=ref_text if isinstance(ref_text, str) and ref_text.strip() else None,
    )


# --- the rest --------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    state = _state(request)
    health = state.engine.health()
    return JSONResponse(
        {
            "status": "ok" if health.get("state") == "ready" else health.get("state", "unknown"),
            "engine": {**state.engine.info.as_message(), **health},
            "sessions": len(state.sessions),
            "pending": len(state.pending),
        }
    )


async def livez(request: Request) -> Response:
    """The process answers: for an orchestrator's liveness probe."""
    return JSONResponse({"status": "alive"})


async def readyz(request: Request) -> Response:
    """Whether to send this server new work: 503 while the engine is not ready or the server drains."""
    state = _state(request)
    engine_state = state.engine.health().get("state", "ready")
    status = "draining" if state.draining else engine_state
    return JSONResponse({"status": status}, status_code=200 if status == "ready" else 503)


async def ca_certificate(request: Request) -> Response:
    path = _state(request).settings.certs_dir / CA_CERT
    if not path.exists():
        return Response("this server uses its own certificate (--cert); there is no local CA\n", status_code=404)
    return FileResponse(path, media_type="application/x-x509-ca-cert", filename="minestream-ca.pem")


async def metrics_endpoint(request: Request) -> Response:
    return Response(prometheus_client.generate_latest(), media_type=prometheus_client.CONTENT_TYPE_LATEST)
