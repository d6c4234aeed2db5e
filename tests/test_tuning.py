"""The Ray Tune search: its config, searcher choice, concurrency, report; and the tiny search end to end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from bg2vec.config import load_config
from bg2vec.errors import Bg2VecError, ConfigError
from bg2vec.training.config import ContrastiveConfig, MNTPConfig, SimCSEConfig
from bg2vec.tuning import search as tuning
from bg2vec.tuning.report import TrialRecord, write_report
from bg2vec.tuning.search import TuneConfig, contrastive_trial_config, stage_settings, trial_configs
from conftest import REPO, write_trained_encoder


def tiny(*overrides: str) -> TuneConfig:
    return load_config(TuneConfig, str(REPO / "configs" / "tiny" / "tune.yaml"),
                       ["data=/d", "output=/o", f"mntp_config={REPO}/configs/tiny/mntp.yaml",
                        f"simcse_config={REPO}/configs/tiny/simcse.yaml", *overrides])


def test_the_presets_load_and_a_trial_gets_its_settings_and_directories():
    cfg = tiny()
    assert cfg.num_samples >= 4 and cfg.space.mask_ratio == [0.2, 0.4, 0.6, 0.8]
    settings = stage_settings(cfg)
    mntp, simcse = trial_configs(settings, {"mask_ratio": 0.6, "temperature": 0.07, "simcse_lr": 2e-4}, "/o/trials/t1",
                                 "t1")
    assert isinstance(mntp, MNTPConfig) and isinstance(simcse, SimCSEConfig)
    assert (mntp.mask_ratio, mntp.max_steps, mntp.scaling.num_workers, mntp.data) == (0.6, 8, 1, "/d")
    assert (mntp.output, mntp.run.name) == ("/o/trials/t1/mntp", "mntp-t1")
    assert (simcse.temperature, simcse.optim.lr, simcse.mntp, simcse.output) == (
        0.07, 2e-4, "/o/trials/t1/mntp", "/o/trials/t1/simcse")
    assert mntp.optim.lr == 5e-3  # not searched: the stage config's
    cfg = load_config(TuneConfig, str(REPO / "configs" / "bggpt-7b" / "tune.yaml"),
                      [f"mntp_config={REPO}/configs/bggpt-7b/mntp.yaml",
                       f"simcse_config={REPO}/configs/bggpt-7b/simcse.yaml"])
    settings = stage_settings(cfg)
    assert settings["mntp"]["scaling"]["use_gpu"] and "simcse_lr" in cfg.space.param_space()


@pytest.mark.parametrize("override, message", [
    ("space.temperature=[0.1]", r"space.temperature must be \[low, high\]"),
    ("space.mask_ratio=[0.5, 1.0]", "space.mask_ratio must be"),
    ("mntp_overrides=[max_step=3]", "unknown key 'max_step'"),
    ("simcse_overrides=[run.dev_blocks=0]", "run.dev_blocks must be > 0"),
])
def test_bad_search_settings_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        stage_settings(tiny(override))


def test_bad_data_and_a_grace_period_as_long_as_a_trial_are_refused_before_ray_starts(tmp_path):
    with pytest.raises(ConfigError, match="asha.grace_period=16 is not below the 16 steps"):
        tuning.run_search(tiny(f"output={tmp_path}", "asha.grace_period=16"))
    with pytest.raises(Bg2VecError, match="data=/d is not a prepared data directory"):
        tuning.run_search(tiny(f"output={tmp_path}"))


def test_auto_picks_optuna_when_it_is_installed(monkeypatch):
    monkeypatch.setattr(tuning, "_optuna_installed", lambda: True)
    assert tuning.choose_searcher("auto") == "optuna"
    monkeypatch.setattr(tuning, "_optuna_installed", lambda: False)
    assert tuning.choose_searcher("auto") == "random" and tuning.choose_searcher("random") == "random"
    with pytest.raises(ConfigError, match=r"pip install 'bg2vec\[tune\]'"):
        tuning.choose_searcher("optuna")
    from ray.tune.search import BasicVariantGenerator

    searcher = tuning.make_searcher("random", seed=0, max_concurrent=2)
    assert isinstance(searcher, BasicVariantGenerator) and searcher.max_concurrent == 2



def test_the_optuna_searcher_runs_seeded_over_the_search_space(ray_local, tmp_path):
    """Optuna's TPE (jobs/tune.py's searcher=auto, as installed by bg2vec[tune]) through Tune on the real
    search space: every sample inside it, and the trials are those the seeded searcher suggests when fed
    each trial's score."""
    import math

    from ray import tune

    space, metric = tuning.SearchSpace(), tuning.METRIC

    def score(config: dict) -> float:  # peaks at mask ratio 0.4 and temperature 0.05
        return -(config["mask_ratio"] - 0.4) ** 2 - math.log10(config["temperature"] / 0.05) ** 2

    def bowl(config: dict) -> None:  # defined here: Tune's workers get it by value, not from this module
        tune.report({metric: score(config)})

    def searcher():
        return tuning.make_searcher(tuning.choose_searcher("auto"), seed=3, max_concurrent=1)

    assert tuning.choose_searcher("auto") == "optuna"
    tuner = tune.Tuner(bowl, param_space=space.param_space(), tune_config=tune.TuneConfig(
        metric=metric, mode="max", num_samples=16, search_alg=searcher()),
        run_config=tune.RunConfig(name="optuna", storage_path=str(tmp_path), verbose=0))
    trials = [r.config for r in tuner.fit()]  # in the order Tune created them
    assert len(trials) == 16
    assert all(c["mask_ratio"] in space.mask_ratio and 0.01 <= c["temperature"] <= 0.2 for c in trials)

    # the searcher alone, fed the same scores, suggests the same trials: past its 10 random ones, TPE's
    # choices depend on the scores, so Tune reported each trial's dev_score to it
    again = searcher()
    again.set_search_properties(metric, "max", space.param_space())
    for i, expected in enumerate(trials):
        suggested = again.suggest(str(i))
        assert suggested == expected
        again.on_trial_complete(str(i), {metric: score(suggested)})

def test_concurrent_trials_follow_from_the_cluster():
    settings = stage_settings(tiny())
    need = tuning.trial_resources(settings, driver_cpus=0.5)
    assert need == {"CPU": 1.0}  # the driver and one worker of 0.5 CPU
    assert tuning.max_concurrent_trials({"CPU": 2.0}, need) == 2
    assert tuning.max_concurrent_trials({"CPU": 0.7}, need) == 1  # never 0: an autoscaler adds nodes
    settings["simcse"]["scaling"] |= {"num_workers": 8, "use_gpu": True, "cpus_per_worker": 4}
    need = tuning.trial_resources(settings, driver_cpus=1)
    assert need == {"CPU": 33, "GPU": 8}
    assert tuning.max_concurrent_trials({"CPU": 256.0, "GPU": 16.0}, need) == 2  # GPUs decide
    assert tuning.max_concurrent_trials({"CPU": 40.0, "GPU": 16.0}, need) == 1  # CPUs decide


def _records(tmp_path):
    done = tmp_path / "trials" / "b" / "simcse"
    return [
        TrialRecord("a", {"mask_ratio": 0.2, "temperature": 0.05}, [(2, 0.3), (4, 0.9)], "stopped"),
        TrialRecord("b", {"mask_ratio": 0.4, "temperature": 0.02}, [(2, 0.4), (4, 0.5), (8, 0.7)], "completed",
                    str(done), "/runs/simcse-b/checkpoint_0000004"),
        TrialRecord("c", {"mask_ratio": 0.8, "temperature": 0.1}, [(2, 0.2), (4, 0.4), (8, 0.6)], "completed",
                    str(tmp_path / "trials" / "c" / "simcse"), None),
        TrialRecord("d", {"mask_ratio": 0.6, "temperature": 0.2}, [], "error", error="the mntp loss became nan"),
    ]


def test_the_report_names_the_best_finished_trial_and_shows_every_trial(tmp_path):
    best = write_report(str(tmp_path), _records(tmp_path), {"mntp": 4, "simcse": 4}, searcher="random")
    # a: the highest score, but stopped early (no model); b: the best trial that finished
    assert best == json.loads((tmp_path / "best.json").read_text())
    assert (best["trial_id"], best["dev_score"], best["config"]["mask_ratio"]) == ("b", 0.7, 0.4)
    assert best["model"].endswith("trials/b/simcse") and best["checkpoint"] == "/runs/simcse-b/checkpoint_0000004"
    assert best["mntp_model"].endswith("trials/b/mntp")
    table = (tmp_path / "trials.md").read_text()
    rows = [line for line in table.splitlines() if re.match(r"\| [abcd] \|", line)]
    assert [r.split()[1] for r in rows] == ["a", "b", "c", "d"]  # by final dev_score
    assert "| a | 0.2 | 0.05 | 0.9000 | 4/8 | stopped early (ASHA) |" in rows[0]
    assert "| b | 0.4 | 0.02 | 0.7000 | 8/8 | completed |" in rows[1]
    assert "error: the mntp loss became nan" in rows[3]
    assert (tmp_path / "trials.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_finished_trial_is_an_error_and_writes_no_best(tmp_path):
    records = [r for r in _records(tmp_path) if r.status != "completed"]
    with pytest.raises(Bg2VecError, match="no trial of the search finished.*errors: the mntp loss became nan$"):
        write_report(str(tmp_path), records, {"mntp": 4, "simcse": 4}, searcher="random")
    assert (tmp_path / "trials.md").exists() and not (tmp_path / "best.json").exists()


def contrastive_search(*overrides: str) -> TuneConfig:
    return load_config(TuneConfig, str(REPO / "configs" / "tiny" / "tune_contrastive.yaml"),
                       ["pairs=/p", "mntp=/m", "output=/o", f"contrastive_config={REPO}/configs/tiny/contrastive.yaml",
                        *overrides])


def test_a_contrastive_search_trains_that_stage_alone_with_the_sampled_temperature_and_lr():
    settings = stage_settings(contrastive_search())
    assert tuning.trial_stages(settings) == ["contrastive"]
    params = {"temperature": 0.03, "contrastive_lr": 1e-3}
    trial = contrastive_trial_config(settings, params, "/o/trials/t1", "t1")
    assert isinstance(trial, ContrastiveConfig)
    assert (trial.temperature, trial.optim.lr, trial.max_steps, trial.scaling.num_workers) == (0.03, 1e-3, 8, 1)
    assert (trial.pairs, trial.mntp, trial.simcse) == ("/p", "/m", None)
    assert (trial.output, trial.run.name, trial.run.dev_blocks) == ("/o/trials/t1/contrastive", "contrastive-t1", 64)
    assert trial.query_instruction == ContrastiveConfig.query_instruction  # not searched: the stage config's
    assert set(contrastive_search().space.param_space(contrastive=True)) == {"temperature", "contrastive_lr"}
    assert tuning.trial_resources(settings, driver_cpus=0.5) == {"CPU": 1.0}
    # simcse= replaces the config's mntp as the start
    started = stage_settings(contrastive_search("mntp=null", "simcse=/s"))["contrastive"]
    assert (started["mntp"], started["simcse"]) == (None, "/s")
    cfg = load_config(TuneConfig, str(REPO / "configs" / "gemma3-270m" / "tune_contrastive.yaml"),
                      [f"contrastive_config={REPO}/configs/gemma3-270m/contrastive.yaml"])
    assert stage_settings(cfg)["contrastive"]["matryoshka_dims"] == [64, 128, 256]


@pytest.mark.parametrize("search, override, message", [
    (contrastive_search, "data=/d", "contrastive_config is set.*data must be left out"),
    (contrastive_search, "space.simcse_lr=[1e-4, 1e-3]", "space.simcse_lr must be left out"),
    (tiny, "space.contrastive_lr=[1e-4, 1e-3]", "belong to a search of the contrastive stage"),
    (tiny, "mntp_config=null", "mntp_config and simcse_config are required"),
])
def test_settings_of_the_other_search_are_refused(search, override, message):
    with pytest.raises(ConfigError, match=message):
        search(override)


def test_a_contrastive_search_names_missing_inputs_before_ray_starts(tmp_path):
    with pytest.raises(Bg2VecError, match="pairs=/p has no manifest.json: give the output of jobs/pairs.py"):
        tuning.run_search(contrastive_search(f"output={tmp_path}"))


def test_the_report_of_a_contrastive_search_names_its_objective(tmp_path):
    records = [TrialRecord("a", {"temperature": 0.05}, [(2, 0.5), (8, 0.8)], "completed",
                           str(tmp_path / "trials" / "a" / "contrastive"))]
    best = write_report(str(tmp_path), records, {"contrastive": 8}, searcher="random")
    assert set(best) == {"trial_id", "dev_score", "config", "model", "checkpoint", "trials", "searcher"}
    table = (tmp_path / "trials.md").read_text()
    assert "MRR of the validation queries finding their positives" in table and "8 steps (contrastive)" in table


# ------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_the_tiny_search_runs_stops_trials_early_and_resumes(tmp_path):
    from bg2vec import Bg2Vec

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)  # plain `python jobs/...`: a local Ray of its own

    def job(script, *args, timeout=900):
        done = subprocess.run([sys.executable, f"jobs/{script}.py", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=timeout)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        return done.stdout

    data, out = tmp_path / "data", tmp_path / "tune"
    job("prepare_data", "--config", "configs/tiny/prepare.yaml", f"output={data}")
    # one trial at a time: ASHA's decisions depend on the order trials reach a rung, and with a fixed
    # order (and the seeded searcher, and MNTP's deterministic dev scores) the early stop is certain
    # (random search: its order is the one these assertions were made for; Optuna's path is tested above)
    search = ["--config", "configs/tiny/tune.yaml", f"data={data}", f"output={out}", "max_concurrent_trials=1",
              "searcher=random"]
    stdout = job("tune", *search)
    assert re.search(r"search finished: 4 trials \([1-3] stopped early by ASHA\)", stdout), stdout[-3000:]

    table = (out / "trials.md").read_text()
    rows = [line for line in table.splitlines() if re.match(r"\| \w+ \| [\d.]+ \|", line)]
    assert len(rows) == 4, table
    assert any("stopped early (ASHA)" in r and not r.split("|")[-3].strip().startswith("16/") for r in rows), table
    assert (out / "trials.png").stat().st_size > 1000
    best = json.loads((out / "best.json").read_text())
    assert set(best["config"]) == {"mask_ratio", "temperature"} and 0 < best["dev_score"] <= 1
    assert f"| {best['trial_id']} |" in table and os.path.isdir(best["checkpoint"])
    assert Bg2Vec.from_pretrained(best["model"]).encode(["София е столицата на България."]).shape == (1, 128)

    # the same command again: Tuner.restore finds every trial finished and writes the same report
    stdout = job("tune", *search)
    assert "resuming the search" in stdout and json.loads((out / "best.json").read_text()) == best


@pytest.mark.slow
def test_a_tiny_contrastive_search_trial_trains_the_stage_with_its_sampled_settings(ray_local, prepared_sample,
                                                                                   tmp_path):
    """One 2-step trial of the contrastive stage from a tiny MNTP output on pairs in the contract's layout (the
    search's wiring is tested above; each trial is a Ray Train + DeepSpeed run, too slow for two here)."""
    import pyarrow.parquet as pq
    from test_contrastive_stage import write_pairs
    from transformers import AutoTokenizer

    from bg2vec import Bg2Vec

    pairs = write_pairs(tmp_path / "pairs", pq.read_table(prepared_sample / "pages").to_pylist())
    mntp = write_trained_encoder(tmp_path / "mntp", AutoTokenizer.from_pretrained(prepared_sample / "tokenizer"),
                                 stages=("mntp",))
    out = tmp_path / "tune"
    result = tuning.run_search(contrastive_search(
        f"pairs={pairs}", f"mntp={mntp}", f"output={out}", "num_samples=1", "asha.grace_period=1",
        "contrastive_overrides=[max_steps=2, global_batch_size=8, optim.warmup_steps=1, scaling.num_workers=1, "
        "scaling.cpus_per_worker=0.5, run.log_every=2, run.eval_every=2, run.checkpoint_every=2, run.dev_blocks=16]"))
    assert len(result["records"]) == 1 and result["records"][0].history[-1][0] == 2
    best = json.loads((out / "best.json").read_text())
    assert set(best["config"]) == {"temperature", "contrastive_lr"} and 0 < best["dev_score"] <= 1
    assert best["model"] == str(out / "trials" / best["trial_id"] / "contrastive")
    saved = json.loads((out / "trials" / best["trial_id"] / "contrastive" / "bg2vec_config.json").read_text())
    assert [s["name"] for s in saved["stages"]] == ["mntp", "contrastive"]
    assert saved["stages"][1]["hyperparameters"]["temperature"] == pytest.approx(best["config"]["temperature"])
    assert Bg2Vec.from_pretrained(best["model"]).config.prompts["query"] == ContrastiveConfig.query_instruction
    assert "MRR of the validation queries finding their positives" in (out / "trials.md").read_text()
