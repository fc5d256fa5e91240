"""``palaver`` with neonize faked to reach a fake WhatsApp server, for the cluster tests.

    python -m tests.cluster.whatsapp_member --wa-server 127.0.0.1:PORT run -c palaver.json

The rest of the arguments are ``palaver``'s own: this installs
:mod:`tests.fakes.neonize_remote` in place of neonize's client and Go library (as the
in-process tests do with a ``pytest.MonkeyPatch``, never undone: the process is ours)
and then runs bridge's CLI ``main`` unchanged, so everything above neonize — the
WhatsApp channel, Palaver's ``NeonizeClient``, the store, the coordinator — is what
``palaver run`` runs.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "--wa-server":
        print("usage: python -m tests.cluster.whatsapp_member --wa-server HOST:PORT "
              "<palaver arguments>", file=sys.stderr)
        return 2
    import pytest

    from tests.fakes import neonize_remote

    neonize_remote.install(pytest.MonkeyPatch(), argv[1])
    from bridge.cli import main as palaver

    return palaver(argv[2:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
