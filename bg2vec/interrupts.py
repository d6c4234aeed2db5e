"""SIGTERM (``ray job stop``, ``kill``, a container's stop) handled as Ctrl-C: a KeyboardInterrupt, so that
``finally`` blocks remove staged outputs and jobs exit through their usual "interrupted" path."""

from __future__ import annotations

import signal


def stop_on_sigterm() -> None:
    """From now on SIGTERM raises KeyboardInterrupt in the main thread (call it from the main thread)."""
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
