"""Signals as a terminal delivers them, for tests that press Ctrl-C on a child process."""

from __future__ import annotations

import signal


def default_sigint() -> None:
    """A ``preexec_fn``: the child gets SIGINT's default disposition. A shell's background
    job (``pytest ... &`` in a script, nohup, some CI runners) starts with SIGINT ignored,
    and Python then installs no KeyboardInterrupt handler, so a Ctrl-C test would wait on a
    child that never saw the signal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
