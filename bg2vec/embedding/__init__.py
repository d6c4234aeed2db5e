"""Batch embedding of a corpus with Ray Data (``jobs/embed.py``): passages in, Parquet vectors out."""
