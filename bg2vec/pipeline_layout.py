"""Where ``jobs/pipeline.py`` writes each stage under its ``output=DIR`` (DESIGN.md's artifact layout).

The pipeline runs the stages in this order; the export finds a pipeline's evaluation beside a trained
stage through it (``DIR/eval/results.json`` for ``model=DIR/contrastive``).
"""

from __future__ import annotations

STAGES = ("prepare", "mntp", "simcse", "pairs", "contrastive", "evaluate", "embed")
OUTPUTS = {"prepare": "data", "mntp": "mntp", "simcse": "simcse", "pairs": "pairs", "contrastive": "contrastive",
           "evaluate": "eval", "embed": "embeddings"}
"""Each stage's folder under the pipeline's output."""
LAST_WRITTEN = {"prepare": "manifest.json", "mntp": "bg2vec_config.json", "simcse": "bg2vec_config.json",
                "pairs": "manifest.json", "contrastive": "bg2vec_config.json", "evaluate": "results.json",
                "embed": "manifest.json"}
"""The file a stage writes last: its output is complete when it is there."""
TRAINING = ("mntp", "simcse", "contrastive")
"""The stages whose output is an encoder."""
