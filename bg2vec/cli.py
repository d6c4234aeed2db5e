"""The shared shape of every job script: ``--config FILE key=value ...``, help, and error reporting."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from typing import TypeVar

from bg2vec.config import describe, load_config
from bg2vec.console import VERBOSE_ENV, setup_console
from bg2vec.errors import Bg2VecError, ConfigError

T = TypeVar("T")
SETTING = re.compile(r"[A-Za-z_][\w.]*=")  # a key=value argument: a (dotted) key, then =


def run_job(config_cls: type[T], main: Callable[[T], str], doc: str | None, text_key: str | None = None) -> None:
    """Parse the command line into ``config_cls``, run ``main`` and exit with its status.

    With ``text_key`` (e.g. a search's ``query``), the arguments that are not ``key=value`` are joined
    into that key's value, so free text needs no ``key=`` in front of it.

    Exit codes: 0 success; 2 bad command line or configuration; 1 a bad input or environment
    (:class:`Bg2VecError`, printed as one paragraph, no traceback); other exceptions keep their
    traceback, as bugs should.
    """
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="settings (key=value; nested keys with dots):\n" + describe(config_cls))
    parser.add_argument("--config", help="YAML file with settings (e.g. configs/tiny/...)")
    extra = f"; the other arguments are the {text_key}" if text_key else ""
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings that override the file" + extra)
    parser.add_argument("--verbose", action="store_true",
                        help=f"also print Ray's, DeepSpeed's and transformers' own logs (as {VERBOSE_ENV}=1 does)")
    args = parser.parse_args()
    setup_console(args.verbose)
    overrides = args.overrides
    if text_key is not None:
        words = [o for o in overrides if not SETTING.match(o)]
        overrides = [o for o in overrides if SETTING.match(o)] + ([f"{text_key}={' '.join(words)}"] if words else [])
    try:
        cfg = load_config(config_cls, args.config, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        print(main(cfg))
    except Bg2VecError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
