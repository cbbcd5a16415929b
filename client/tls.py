"""Which servers the client trusts."""

from __future__ import annotations

import ssl
from pathlib import Path


def ssl_context(ca: str | Path | None = None, *, insecure: bool = False) -> ssl.SSLContext:
    """The system's trusted CAs, plus ``ca`` (a PEM file, e.g. the server's ``certs/ca.pem``).

    ``insecure`` turns verification off: the traffic is encrypted but the
    server is not authenticated. For a quick test on a LAN only.
    """
    context = ssl.create_default_context()
    if ca is not None:
        context.load_verify_locations(cafile=str(ca))
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
