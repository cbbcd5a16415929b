"""``python -m client``: the same CLI as the ``minestream`` command (see ``client.cli``)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
