"""Starting Ray, and reporting user errors raised inside Ray tasks as themselves."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import ray
from ray.exceptions import RayTaskError

from bg2vec.errors import Bg2VecError


def init_ray(address: str | None = None) -> None:
    """Join ``address`` (or RAY_ADDRESS, as set by ``ray job submit``), else start a local Ray."""
    if ray.is_initialized():
        return
    if address is None and "RAY_ADDRESS" not in os.environ:
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)  # never a stray cluster
    else:
        ray.init(address=address, logging_level=logging.WARNING)


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
