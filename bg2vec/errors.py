"""Errors caused by the user's input or environment.

Jobs print these as a one-paragraph message (no traceback) and exit non-zero; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class Bg2VecError(Exception):
    """Bad input or environment: the message names what and where, and what to do."""


class ConfigError(Bg2VecError):
    """A configuration file or override is invalid (unknown key, wrong type, bad value)."""


class DumpError(Bg2VecError):
    """A Wikipedia dump cannot be read (missing, not a dump, truncated, badly encoded)."""


class DownloadError(Bg2VecError):
    """A download failed or its checksum did not match the published one."""


@contextlib.contextmanager
def reraise_user_error() -> Iterator[None]:
    """Ray wraps exceptions from tasks (RayTaskError, Ray Data's UserCodeException...); unwrap a
    :class:`Bg2VecError` so that the job prints its message, not three tracebacks."""
    try:
        yield
    except Exception as e:
        cause = find_user_error(e)
        if cause is None or cause is e:
            raise
        raise cause from None


def find_user_error(error: BaseException) -> Bg2VecError | None:
    from ray.exceptions import RayTaskError

    seen = set()
    stack = [error]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, Bg2VecError) and not isinstance(e, RayTaskError):
            return e  # (RayTaskError subclasses the cause's type but prints a traceback: use .cause)
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return None
