"""Errors caused by the user's input or environment.

Jobs print these as a one-paragraph message (no traceback) and exit non-zero; anything else is a bug
and keeps its traceback.
"""


class Bg2VecError(Exception):
    """Bad input or environment: the message names what and where, and what to do."""


class ConfigError(Bg2VecError):
    """A configuration file or override is invalid (unknown key, wrong type, bad value)."""


class DumpError(Bg2VecError):
    """A Wikipedia dump cannot be read (missing, not a dump, truncated, badly encoded)."""


class DownloadError(Bg2VecError):
    """A download failed or its checksum did not match the published one."""
