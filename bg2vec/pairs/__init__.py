"""Training pairs for the contrastive stage: mined from a prepared corpus, or the user's own (jobs/pairs.py)."""
