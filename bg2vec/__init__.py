"""bg2vec: turn a Bulgarian decoder LLM into a text encoder with the LLM2Vec recipe, on Ray."""

__version__ = "0.1.0"
__all__ = ["Bg2Vec"]


def __getattr__(name: str):
    # Lazy: Ray workers import bg2vec's data modules, which must not pay for torch and transformers.
    if name == "Bg2Vec":
        from bg2vec.modeling.encoder import Bg2Vec

        return Bg2Vec
    raise AttributeError(f"module 'bg2vec' has no attribute {name!r}")
