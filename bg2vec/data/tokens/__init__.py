"""Tokens: training a byte-level BPE tokenizer on the corpus and packing token blocks for MNTP."""
