"""Hyperparameter search with Ray Tune (``jobs/tune.py``): ``search`` runs the trials (MNTP's mask ratio,
SimCSE's or the contrastive stage's temperature), ``report`` writes what a search leaves behind."""
