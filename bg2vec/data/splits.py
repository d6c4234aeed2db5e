"""Train/validation split by a stable hash of the page id (or of a user pair's query).

The same page lands in the same split on every run, whatever the cluster size, read order or
dump date, so validation pages never leak into training when the data is prepared again.
"""

from __future__ import annotations

import hashlib

_SALT = b"bg2vec-split:"


def split_of(key: int | str, validation_fraction: float) -> str:
    digest = hashlib.blake2b(_SALT + str(key).encode(), digest_size=8).digest()
    return "validation" if int.from_bytes(digest, "big") < validation_fraction * 2**64 else "train"
