"""Version-specific facts about the libraries bg2vec builds on, kept in one place.

transformers: bidirectional attention uses the public ``is_causal`` config attribute / forward
keyword (huggingface/transformers#43705), first released in 5.2.0; checked on 5.2.0 and 5.24.0.
With ``is_causal=False`` the mask helpers build padding-only (bidirectional) masks, sliding-window
layers get symmetric windows, and the attention functions (eager, sdpa, flash-attention-2) stop
applying their causal flag. No transformers internals are copied or patched.
"""

from __future__ import annotations

import transformers
from packaging.version import Version

from bg2vec.errors import Bg2VecError

TRANSFORMERS_MIN = "5.2.0"
TRANSFORMERS_CHECKED = ("5.2.0", "5.24.0")


def require_transformers() -> None:
    if Version(transformers.__version__) < Version(TRANSFORMERS_MIN):
        raise Bg2VecError(f"bg2vec needs transformers >= {TRANSFORMERS_MIN} for bidirectional attention "
                          f"(the is_causal switch), found {transformers.__version__}: pip install -U transformers")
