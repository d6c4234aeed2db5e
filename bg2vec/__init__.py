"""bg2vec: turn a Bulgarian decoder LLM into a text encoder with the LLM2Vec recipe, on Ray."""

__version__ = "0.1.0"
