"""The shared shape of every job script: ``--config FILE key=value ...``, help, and error reporting."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TypeVar

from bg2vec.config import describe, load_config
from bg2vec.console import VERBOSE_ENV, setup_console
from bg2vec.errors import Bg2VecError, ConfigError

T = TypeVar("T")


def run_job(config_cls: type[T], main: Callable[[T], str], doc: str | None) -> None:
    """Parse the command line into ``config_cls``, run ``main`` and exit with its status.

    Exit codes: 0 success; 2 bad command line or configuration; 1 a bad input or environment
    (:class:`Bg2VecError`, printed as one paragraph, no traceback); other exceptions keep their
    traceback, as bugs should.
    """
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="settings (key=value; nested keys with dots):\n" + describe(config_cls))
    parser.add_argument("--config", help="YAML file with settings (e.g. configs/tiny/...)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings that override the file")
    parser.add_argument("--verbose", action="store_true",
                        help=f"also print Ray's, DeepSpeed's and transformers' own logs (as {VERBOSE_ENV}=1 does)")
    args = parser.parse_args()
    setup_console(args.verbose)
    try:
        cfg = load_config(config_cls, args.config, args.overrides)
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
