"""The model side: bidirectional attention, pooling, dropout, and the Bg2Vec encoder."""

from bg2vec.modeling.bidirectional import FAMILIES, family_of, is_bidirectional, make_bidirectional, make_causal
from bg2vec.modeling.inputs import position_ids_for
from bg2vec.modeling.pooling import POOLING_MODES, pool

__all__ = ["FAMILIES", "POOLING_MODES", "family_of", "is_bidirectional", "make_bidirectional", "make_causal",
           "pool", "position_ids_for"]
