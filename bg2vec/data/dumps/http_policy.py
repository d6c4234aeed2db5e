"""How bg2vec's HTTP clients identify themselves and pace their retries."""

from __future__ import annotations

import sys
import time

# Wikimedia asks clients to identify themselves; generic library agents may be throttled.
USER_AGENT = (
    "bg2vec (Bulgarian word embeddings from Wikipedia dumps) "
    f"Python-urllib/{sys.version_info[0]}.{sys.version_info[1]}"
)
BACKOFF_BASE = 0.5  # seconds before the first retry; doubles per consecutive failure
BACKOFF_CAP = 30.0


def pause_before_retry(failures: int) -> None:
    """Exponential backoff after the ``failures``-th consecutive failure (1-based)."""
    time.sleep(min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (failures - 1)))
