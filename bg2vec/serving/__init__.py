"""An OpenAI-compatible embeddings server on Ray Serve (jobs/serve.py, ``serve run bg2vec.serving.app:build``)."""
