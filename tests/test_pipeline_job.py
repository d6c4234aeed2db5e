"""jobs/pipeline.py: each stage's config comes from the preset, wired to the previous stage's output."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from bg2vec.errors import Bg2VecError, ConfigError
from bg2vec.ray_session import free_port
from conftest import REPO

spec = importlib.util.spec_from_file_location("pipeline_job", REPO / "jobs" / "pipeline.py")
pipeline = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = pipeline  # dataclasses look their module up there
spec.loader.exec_module(pipeline)


def test_stages_are_wired_and_overrides_reach_their_stage(tmp_path):
    configs = pipeline.stage_configs("tiny", str(tmp_path), ["mntp.max_steps=7", "evaluate.batch_size=3"])
    assert configs["prepare"].output == f"{tmp_path}/data"
    assert (configs["mntp"].data, configs["mntp"].output, configs["mntp"].max_steps) == (
        f"{tmp_path}/data", f"{tmp_path}/mntp", 7)
    assert (configs["simcse"].mntp, configs["simcse"].output) == (f"{tmp_path}/mntp", f"{tmp_path}/simcse")
    # pairs mined from the prepared pages, their hard negatives by the encoder the contrastive stage starts from
    assert (configs["pairs"].data, configs["pairs"].model, configs["pairs"].output) == (
        f"{tmp_path}/data", f"{tmp_path}/mntp", f"{tmp_path}/pairs")
    assert (configs["contrastive"].pairs, configs["contrastive"].mntp, configs["contrastive"].simcse,
            configs["contrastive"].output) == (f"{tmp_path}/pairs", f"{tmp_path}/mntp", None, f"{tmp_path}/contrastive")
    # the final encoder is evaluated and embedded; SimCSE, not among its stages, is a row of its own
    assert (configs["evaluate"].model, configs["evaluate"].batch_size) == (f"{tmp_path}/contrastive", 3)
    assert [(m.name, m.path) for m in configs["evaluate"].models][0] == ("MNTP + SimCSE", f"{tmp_path}/simcse")
    assert (configs["embed"].model, configs["embed"].input, configs["embed"].output) == (
        f"{tmp_path}/contrastive", f"{tmp_path}/data", f"{tmp_path}/embeddings")
    assert configs["simcse"].max_steps == 30  # the preset's own value where nothing overrides it
    for preset in ("tiny", "gemma3-270m", "bggpt-7b", "bggpt-gemma2-9b"):  # every preset has every stage
        assert set(pipeline.stage_configs(preset, str(tmp_path), [])) == set(pipeline.STAGES)
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
    # overwrite is read as any config boolean (yes/no too), and a wrong value is named
    assert pipeline.load_config(pipeline.PipelineSettings, None, ["output=x", "overwrite=yes"]).overwrite is True
    done = subprocess.run([sys.executable, "jobs/pipeline.py", "--preset", "tiny", f"output={tmp_path}",
                           "overwrite=maybe"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "overwrite must be true or false, got 'maybe'" in done.stderr


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
