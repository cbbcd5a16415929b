"""The CLI's exit codes, and the one-line message for each way a command fails."""

from __future__ import annotations

from enum import IntEnum

from ..errors import CertificateError, ConnectError, Disconnected, MineStreamError, ServerError, Timeout, TLSError, Unauthorized


class Exit(IntEnum):
    OK = 0
    SERVER_ERROR = 1
    """The server refused or failed the request (bad_message, limit, voice_not_found, engine_error…)."""
    USAGE = 2
    """Bad flags or input (argparse's code)."""
    UNREACHABLE = 3
    """The server could not be reached, or the connection was lost."""
    CERTIFICATE = 4
    """The server's certificate did not verify, or TLS failed."""
    UNAUTHORIZED = 5
    """The token is missing or wrong."""
    TIMEOUT = 6
    """The server took longer than a --*-timeout."""
    LOCAL = 7
    """A local file or the audio player failed."""
    INTERRUPTED = 130
    """Ctrl-C."""


EXIT_CODES_HELP = "exit codes: " + ", ".join(
    f"{int(code)} {text}"
    for code, text in (
        (Exit.OK, "done"),
        (Exit.SERVER_ERROR, "the server refused or failed the request"),
        (Exit.USAGE, "usage"),
        (Exit.UNREACHABLE, "server unreachable or connection lost"),
        (Exit.CERTIFICATE, "certificate did not verify / TLS failed"),
        (Exit.UNAUTHORIZED, "token missing or wrong"),
        (Exit.TIMEOUT, "timed out"),
        (Exit.LOCAL, "local file or audio player"),
        (Exit.INTERRUPTED, "interrupted"),
    )
)


class LocalError(Exception):
    """A failure on this machine the CLI explains itself (a file, the player)."""


def explain(exc: BaseException) -> tuple[Exit, str]:
    """The exit code and one line for a failure (without "error: ")."""
    if isinstance(exc, CertificateError):
        return Exit.CERTIFICATE, (
            f"{exc}; trust the server's CA with --ca FILE (its certs/ca.pem, also served at /ca.pem), or skip the check with --insecure"
        )
    if isinstance(exc, TLSError):
        return Exit.CERTIFICATE, f"{exc} (is it a MineStream server speaking TLS? use ws:// for a plain one)"
    if isinstance(exc, Unauthorized):
        return Exit.UNAUTHORIZED, (
            f"unauthorized ({exc.message}); give the server's token with --token-file FILE, $MINESTREAM_TOKEN or --token"
        )
    if isinstance(exc, Disconnected):
        return Exit.UNREACHABLE, f"the server closed the connection: {exc.message}"
    if isinstance(exc, ServerError):
        return Exit.SERVER_ERROR, f"the server refused: {exc.code}: {exc.message}"
    if isinstance(exc, Timeout):
        return Exit.TIMEOUT, f"{exc} (raise the limit with {TIMEOUT_FLAGS[exc.stage]})" if exc.stage in TIMEOUT_FLAGS else str(exc)
    if isinstance(exc, ConnectError):
        return Exit.UNREACHABLE, str(exc)
    if isinstance(exc, LocalError | OSError):
        return Exit.LOCAL, str(exc)
    if isinstance(exc, MineStreamError):
        return Exit.SERVER_ERROR, str(exc)
    raise exc


TIMEOUT_FLAGS = {
    "connect": "--connect-timeout",
    "ready": "--connect-timeout",
    "first_audio": "--first-audio-timeout",
    "idle": "--idle-timeout",
    "upload": "--upload-timeout",
    "request": "--request-timeout",
    "overall": "--timeout",
}
"""The flag that sets each ``Timeout.stage``."""
