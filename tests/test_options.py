"""Server options: from flags and from MINESTREAM_* variables, the token from a file, plain HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from server.__main__ import parse_args


def test_every_option_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MINESTREAM_MAX_SESSIONS", "7")
    monkeypatch.setenv("MINESTREAM_HELLO_TIMEOUT_S", "2.5")
    monkeypatch.setenv("MINESTREAM_ALLOW_ORIGIN", "https://a.example, https://b.example")
    monkeypatch.setenv("MINESTREAM_ENGINE", "preview")
    settings, _ = parse_args(["--port", "9999"])
    assert (settings.limits.max_sessions, settings.limits.hello_timeout_s, settings.port) == (7, 2.5, 9999)
    assert settings.allowed_origins == ("https://a.example", "https://b.example") and settings.engine == "preview"
    settings, _ = parse_args(["--max-sessions", "3"])  # a flag wins over the environment
    assert settings.limits.max_sessions == 3


def test_the_token_from_a_file_and_no_tls_only_where_it_is_safe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    settings, _ = parse_args(["--token-file", str(secret)])
    assert settings.token == "from-a-file" and settings.token_required
    with pytest.raises(SystemExit) as refused:
        parse_args(["--host", "0.0.0.0", "--no-tls"])
    assert refused.value.code == 2 and "--behind-proxy" in capsys.readouterr().err
    settings, _ = parse_args(["--host", "0.0.0.0", "--no-tls", "--behind-proxy"])
    assert not settings.tls and settings.behind_proxy
    with pytest.raises(SystemExit):
        parse_args(["--token-file", str(tmp_path / "missing")])


def test_every_flag_names_its_variable_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    help_text = capsys.readouterr().out
    for variable in ("MINESTREAM_HOST", "MINESTREAM_MAX_PENDING", "MINESTREAM_IDLE_TIMEOUT_S", "MINESTREAM_DATABASE_URL"):
        assert variable in help_text


def test_plain_http_behind_a_proxy_on_loopback(server_factory: Any) -> None:
    from tests.conftest import LiveServer

    live: LiveServer = server_factory("--no-tls", plain=True)
    response = httpx.get(f"http://127.0.0.1:{live.port}/healthz", timeout=10)
    assert response.status_code == 200 and response.json()["status"] == "ok"
