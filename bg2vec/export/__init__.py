"""Export a trained encoder as a plain sentence-transformers folder with a Hugging Face model card.

See :func:`bg2vec.export.folder.export` (``jobs/export.py``).
"""
