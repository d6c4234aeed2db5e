"""Training objectives of the LLM2Vec recipe: MNTP and unsupervised SimCSE."""
