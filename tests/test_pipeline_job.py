"""jobs/pipeline.py: each stage's config comes from the preset, wired to the previous stage's output."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from bg2vec.errors import Bg2VecError, ConfigError
from bg2vec.ray_utils import free_port
from conftest import REPO

spec = importlib.util.spec_from_file_location("pipeline_job", REPO / "jobs" / "pipeline.py")
pipeline = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pipeline)


def test_stages_are_wired_and_overrides_reach_their_stage(tmp_path):
    configs = pipeline.stage_configs("tiny", str(tmp_path), ["mntp.max_steps=7", "evaluate.batch_size=3"])
    assert configs["prepare"].output == f"{tmp_path}/data"
    assert (configs["mntp"].data, configs["mntp"].output, configs["mntp"].max_steps) == (
        f"{tmp_path}/data", f"{tmp_path}/mntp", 7)
    assert (configs["simcse"].mntp, configs["simcse"].output) == (f"{tmp_path}/mntp", f"{tmp_path}/simcse")
    assert (configs["evaluate"].model, configs["evaluate"].batch_size) == (f"{tmp_path}/simcse", 3)
    assert (configs["embed"].model, configs["embed"].input, configs["embed"].output) == (
        f"{tmp_path}/simcse", f"{tmp_path}/data", f"{tmp_path}/embeddings")
    assert configs["simcse"].max_steps == 30  # the preset's own value where nothing overrides it
    with pytest.raises(ConfigError, match="prefix it with a stage"):
        pipeline.stage_configs("tiny", str(tmp_path), ["max_steps=7"])
    with pytest.raises(ConfigError, match="no folder configs/huge"):
        pipeline.stage_configs("huge", str(tmp_path), [])


def test_the_command_line_names_what_is_missing(tmp_path):
    done = subprocess.run([sys.executable, "jobs/pipeline.py", "--preset", "tiny"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "output=DIR is required" in done.stderr
    done = subprocess.run([sys.executable, "jobs/pipeline.py", "--preset", "tiny", f"output={tmp_path}",
                           "mntp.mask_ratio=7"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "mask_ratio" in done.stderr and not list(tmp_path.iterdir())


def test_missing_or_undownloadable_evaluation_files_stop_the_pipeline_before_any_stage(tmp_path, fast_retries):
    output = tmp_path / "run"
    with pytest.raises(Bg2VecError, match=rf"task SIB200Classification: file {tmp_path}/nowhere/sib200_bul/train.tsv "
                                          r"does not exist .*set data_dir="):
        pipeline.run("bggpt-7b", str(output), False, [f"evaluate.data_dir={tmp_path}/nowhere"])
    offline = [f"evaluate.cache_dir={tmp_path / 'cache'}", f"evaluate.download_mirror=http://127.0.0.1:{free_port()}"]
    with pytest.raises(Bg2VecError, match=r"task SIB200Classification: cannot download the evaluation file "
                                          r"sib200_bul/train.tsv: .*Offline\? Set data_dir="):
        pipeline.run("bggpt-7b", str(output), False, offline)
    assert not output.exists()  # nothing prepared or trained first
