"""Attacks on a MineStream server, measured from outside: issue 13's adversarial pass as one command.

    python -m bench.attacks --server-dir /work/old-build --out bench/out/attacks            # one column
    python -m bench.attacks --server-dir OLD --server-dir NEW --soak --out bench/out/attacks # before/after, plus the soak

For each code tree, every attack gets a fresh ``python -m server`` started
from that tree (preview engine, TLS on loopback, a free port, its own data
and temp folders); the attack runs, is measured, and the server stops. The
figures come from the client side and from ``/proc`` (the server's
VmRSS/VmHWM, its bytes read, its open temp files, its sockets), never from
the server's internals, so the same command measures any build. The run
writes ``attacks.json`` (every figure), ``attacks.md`` (one row per attack,
one column per tree), the servers' logs, and with ``--soak`` ``soak.png``.

Modules: ``target`` (a server process), ``procfs`` and ``watch`` (what it
holds), ``wire`` (raw protocol for misbehaving clients), one module per
family of attacks (``flood``, ``lockout``, ``texts``, ``fairness``,
``bodies``, ``origin``, ``logs``, ``crash``, ``edge``, ``drain``, ``soak``),
``catalog`` (their order and servers), ``runner`` and ``report``.
"""
