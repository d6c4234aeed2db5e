"""Run by tests/test_pairs_negatives.py in a process of its own (a fresh local Ray, as jobs/pairs.py has):
hard negatives for made-up pairs with a real tiny encoder, interrupted after the embeddings with the pool's
last shard lost, then mined again. Prints the second run's manifest entry as the last line (JSON).

    python tests/interrupted_negatives.py PAIRS_DIR ENCODER_DIR
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from bg2vec.pairs import negatives as mining
from bg2vec.pairs.negatives import NegativesSettings, mine_negatives
from bg2vec.ray_session import start_local_ray

# a random tiny encoder's vectors are all alike: the filters against near-duplicates would leave nothing
SETTINGS = NegativesSettings(per_pair=2, rank_window=[2, 12], batch_size=8, max_similarity_to_positive=None,
                             positive_margin=None)


def main(out: Path, encoder: str) -> dict:
    start_local_ray(num_cpus=2)
    mining.SHARD_ROWS = 8  # the pool in 3 shards

    def interrupted(*args):
        raise KeyboardInterrupt

    write_split = mining.write_split
    mining.write_split = interrupted
    try:
        mine_negatives(str(out), encoder, SETTINGS)
        raise AssertionError("the first run was not interrupted")
    except KeyboardInterrupt:
        pass
    finally:
        mining.write_split = write_split
    (pool_dir,) = (out / "negatives_work" / "train").glob("pool-*")
    (pool_dir / "embedding" / "manifest.json").unlink()
    shutil.rmtree(pool_dir / "embedding" / "index")
    (pool_dir / "embedding" / "vectors" / "part-00002.parquet").unlink()
    print("--- mined again", flush=True)
    return mine_negatives(str(out), encoder, SETTINGS)


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), sys.argv[2])))
