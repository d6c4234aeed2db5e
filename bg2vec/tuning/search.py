"""Ray Tune search over the MNTP mask ratio and the SimCSE temperature (optionally learning rates and
dropout), or over the contrastive stage's temperature (and learning rate) alone, with ASHA early
stopping (``jobs/tune.py``).

A trial is a Tune function trainable that runs the two training stages as Ray Train jobs, exactly as
``jobs/mntp.py`` and ``jobs/simcse.py`` do (their GPUs are requested by each run's ScalingConfig):
MNTP with the trial's mask ratio, then SimCSE from that output with the trial's temperature. A
TuneReportCallback in each run forwards its validation reports to Tune.

- **Contrastive search** (``contrastive_config`` set): each trial is one contrastive-stage run from
  the given MNTP (or SimCSE) directory on the given pairs, with the trial's temperature (and
  learning rate); its dev_score is the MRR of the validation queries finding their positives.
- **Objective**: ``dev_score`` (``bg2vec.training.dev_score``): continuation retrieval on held-out
  validation blocks with the model's own embeddings, computed by the training loop at every
  validation pass of both stages. Validation losses are not comparable across the searched settings
  (a higher mask ratio raises the MNTP loss; the temperature scales the SimCSE loss); this score is.
- **Time axis**: ``trial_step``, the optimizer steps of the trial so far (MNTP's, then MNTP's
  max_steps plus SimCSE's). It is the same for every trial and survives a restart from a checkpoint,
  so ASHA compares trials at the same point of the whole recipe.
- **Searcher**: Optuna (TPE) when installed (``pip install 'bg2vec[tune]'``), else random sampling;
  both seeded.
- **Concurrency**: as many trials as the cluster can run at once (``ray.cluster_resources()`` over
  what one trial holds), so trials never queue for each other's workers.
- **Resume**: running the same command again restores the experiment (``Tuner.restore``): finished
  trials are kept, unfinished and errored ones continue from their runs' last checkpoints.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
from dataclasses import dataclass, field
from typing import Literal

from ray.tune.integration.ray_train import TuneReportCallback

from bg2vec.config import from_dict, load_config, to_dict
from bg2vec.errors import Bg2VecError, ConfigError
from bg2vec.modeling.encoder import CONFIG_NAME
from bg2vec.storage import absolute, child, exists, redact, resolve
from bg2vec.training.config import ContrastiveConfig, MNTPConfig, SimCSEConfig
from bg2vec.training.output import output_state
from bg2vec.tuning.report import METRIC, TIME_ATTR, trial_records, write_report

EXPERIMENT = "tune"  # Tune's own experiment directory, under the output


@dataclass
class SearchSpace:
    """What each trial samples; settings left empty keep the stage configs' values."""

    mask_ratio: list[float] = field(default_factory=lambda: [0.2, 0.4, 0.6, 0.8])
    """MNTP mask ratios to choose from (not used by a contrastive search)."""
    temperature: list[float] = field(default_factory=lambda: [0.01, 0.2])
    """SimCSE temperature (a contrastive search: the contrastive stage's): [low, high], sampled log-uniformly."""
    mntp_lr: list[float] | None = None
    """MNTP peak learning rate: [low, high], log-uniform."""
    simcse_lr: list[float] | None = None
    """SimCSE peak learning rate: [low, high], log-uniform."""
    attention_dropout: list[float] | None = None
    """SimCSE attention dropout values to choose from."""
    contrastive_lr: list[float] | None = None
    """Contrastive search: the contrastive stage's peak learning rate, [low, high], log-uniform."""

    def __post_init__(self) -> None:
        if not self.mask_ratio or not all(0 < r < 1 for r in self.mask_ratio):
            raise ConfigError(f"space.mask_ratio must be a non-empty list of values in (0, 1), got {self.mask_ratio}")
        for name in ("temperature", "mntp_lr", "simcse_lr", "contrastive_lr"):
            bounds = getattr(self, name)
            if bounds is not None and not (len(bounds) == 2 and 0 < bounds[0] <= bounds[1]):
                raise ConfigError(f"space.{name} must be [low, high] with 0 < low <= high, got {bounds}")
        if self.attention_dropout is not None and not (
                self.attention_dropout and all(0 <= p < 1 for p in self.attention_dropout)):
            raise ConfigError(f"space.attention_dropout must be a non-empty list of values in [0, 1), "
                              f"got {self.attention_dropout}")

    def param_space(self, contrastive: bool = False) -> dict:
        """Tune's search space: of the MNTP + SimCSE search, or with ``contrastive`` of the contrastive stage's."""
        from ray import tune

        if contrastive:
            return {"temperature": tune.loguniform(*self.temperature)} | (
                {"contrastive_lr": tune.loguniform(*self.contrastive_lr)} if self.contrastive_lr else {})
        space = {"mask_ratio": tune.choice(self.mask_ratio), "temperature": tune.loguniform(*self.temperature)}
        if self.mntp_lr:
            space["mntp_lr"] = tune.loguniform(*self.mntp_lr)
        if self.simcse_lr:
            space["simcse_lr"] = tune.loguniform(*self.simcse_lr)
        if self.attention_dropout:
            space["attention_dropout"] = tune.choice(self.attention_dropout)
        return space


@dataclass
class AshaSettings:
    """Asynchronous successive halving: at each rung a trial continues only if its dev_score is in
    the best 1/reduction_factor of the scores the trials before it had there."""

    grace_period: int = 100
    """Optimizer steps (trial_step: MNTP and SimCSE counted together) before a trial can be stopped;
    the rungs are at grace_period * reduction_factor^k."""
    reduction_factor: float = 2.0
    """Rung spacing and the share of trials kept at each rung (1/reduction_factor)."""

    def __post_init__(self) -> None:
        if self.grace_period < 1 or self.reduction_factor <= 1:
            raise ConfigError("asha.grace_period must be >= 1 and asha.reduction_factor > 1")


@dataclass
class TuneConfig:
    """The hyperparameter search (jobs/tune.py)."""

    output: str
    """Where the search writes: best.json, trials.md, trials.png, trials/<trial id>/{mntp,simcse} (a
    contrastive search: trials/<trial id>/contrastive; each trial's models and runs) and tune/ (Tune's
    experiment, for resuming)."""
    data: str | None = None
    """A prepared data directory (jobs/prepare_data.py output), for both stages and the dev score."""
    mntp_config: str | None = None
    """The MNTP stage's YAML (e.g. configs/tiny/mntp.yaml); data and output are the search's."""
    simcse_config: str | None = None
    """The SimCSE stage's YAML (e.g. configs/tiny/simcse.yaml); mntp is each trial's MNTP output."""
    contrastive_config: str | None = None
    """Search the contrastive stage alone instead: its YAML (e.g. configs/tiny/contrastive.yaml); each
    trial trains it from mntp= (or simcse=) on pairs=; data, mntp_config and simcse_config are unused."""
    pairs: str | None = None
    """Contrastive search: the pairs directory (jobs/pairs.py output); empty: the contrastive config's."""
    mntp: str | None = None
    """Contrastive search: the MNTP output every trial starts from; empty: the contrastive config's."""
    simcse: str | None = None
    """Contrastive search: start from this SimCSE output instead (of mntp)."""
    contrastive_overrides: list[str] = field(default_factory=list)
    """key=value overrides of the contrastive config for every trial (e.g. [max_steps=200])."""
    mntp_overrides: list[str] = field(default_factory=list)
    """key=value overrides of the MNTP config for every trial (e.g. [max_steps=200])."""
    simcse_overrides: list[str] = field(default_factory=list)
    """key=value overrides of the SimCSE config for every trial."""
    space: SearchSpace = field(default_factory=SearchSpace)
    num_samples: int = 8
    """Trials (sampled configurations)."""
    searcher: Literal["auto", "optuna", "random"] = "auto"
    """auto: Optuna when it is installed (pip install 'bg2vec[tune]'), random otherwise."""
    seed: int = 0
    """Seeds the searcher's sampling. Every trial trains with the stage configs' own seed, so trials
    differ only in the searched settings."""
    asha: AshaSettings = field(default_factory=AshaSettings)
    max_concurrent_trials: int | None = None
    """Trials running at once; empty: as many as the cluster's current CPUs and GPUs fit (set it on
    an autoscaling cluster, whose resources grow once trials ask for them)."""
    driver_cpus: float = 1.0
    """CPUs held by each trial's driver (the Tune function that starts its two Ray Train runs)."""
    ray_address: str | None = None
    """Ray cluster to join (e.g. auto); empty: RAY_ADDRESS if set (ray job submit), else a new local Ray."""

    def __post_init__(self) -> None:
        if self.contrastive_config:
            unused = [k for k in ("data", "mntp_config", "simcse_config") if getattr(self, k)]
            searched = [k for k in ("mntp_lr", "simcse_lr", "attention_dropout") if getattr(self.space, k)]
            if unused or searched:
                raise ConfigError(f"contrastive_config is set: the search trains the contrastive stage alone, so "
                                  f"{', '.join(unused + [f'space.{k}' for k in searched])} must be left out")
            if not self.output:
                raise ConfigError("output is required: give output=DIR")
        elif not self.data or not self.output or not self.mntp_config or not self.simcse_config:
            raise ConfigError("data, output, mntp_config and simcse_config are required (or contrastive_config, "
                              "pairs and mntp for a search of the contrastive stage): give data=DIR output=DIR")
        elif self.space.contrastive_lr or self.pairs or self.mntp or self.simcse or self.contrastive_overrides:
            raise ConfigError("space.contrastive_lr, pairs, mntp, simcse and contrastive_overrides belong to a search "
                              "of the contrastive stage: set contrastive_config (or leave them out)")
        if self.num_samples < 1 or self.driver_cpus <= 0:
            raise ConfigError("num_samples must be >= 1 and driver_cpus > 0")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ConfigError(f"max_concurrent_trials must be >= 1 (or empty), got {self.max_concurrent_trials}")


# ------------------------------------------------------------------------------------------ driver
def run_search(cfg: TuneConfig) -> dict:
    """Run (or resume) the search; returns the best trial's record and where the report is."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from bg2vec.data.pipeline import load_manifest
    from bg2vec.ray_session import init_ray

    cfg.output = absolute(cfg.output)  # trials run in directories of their own
    settings = stage_settings(cfg)
    steps = {stage: settings[stage]["max_steps"] for stage in trial_stages(settings)}
    total = sum(steps.values())
    if cfg.asha.grace_period >= total:
        raise ConfigError(f"asha.grace_period={cfg.asha.grace_period} is not below the {total} steps of a trial "
                          f"({' + '.join(steps)} max_steps): ASHA could never stop one; lower it")
    if "contrastive" in settings:  # the inputs exist, before any trial finds out
        _check_contrastive_inputs(settings["contrastive"])
    else:
        load_manifest(settings["mntp"]["data"])
    searcher_name = choose_searcher(cfg.searcher)
    init_ray(cfg.ray_address)
    trainable = tune.with_resources(tune.with_parameters(run_trial, settings=settings), {"CPU": cfg.driver_cpus})
    experiment = child(cfg.output, EXPERIMENT)
    if tune.Tuner.can_restore(experiment):
        print(f"resuming the search in {redact(experiment)}", flush=True)
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True)
    else:
        if output_state(cfg.output) != "missing":
            raise Bg2VecError(f"output {redact(cfg.output)} holds files but no search to resume; choose another "
                              f"output= (or delete it)")
        need = trial_resources(settings, cfg.driver_cpus)
        concurrent = cfg.max_concurrent_trials or max_concurrent_trials(ray.cluster_resources(), need)
        tuner = tune.Tuner(
            trainable, param_space=cfg.space.param_space(contrastive="contrastive" in settings),
            tune_config=tune.TuneConfig(
                metric=METRIC, mode="max", num_samples=cfg.num_samples,
                search_alg=make_searcher(searcher_name, cfg.seed, concurrent),
                # rungs stop short of the last step: a trial that gets there finishes and saves its model
                scheduler=ASHAScheduler(
                    time_attr=TIME_ATTR, max_t=total - 1, grace_period=cfg.asha.grace_period,
                    reduction_factor=cfg.asha.reduction_factor, stop_last_trials=False),
                trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(name=EXPERIMENT, storage_path=cfg.output))
    grid = tuner.fit()
    records = trial_records(grid, cfg.output, last_stage=list(steps)[-1])
    best = write_report(cfg.output, records, steps, searcher_name)
    return {"best": best, "records": records, "output": cfg.output}


def stage_settings(cfg: TuneConfig) -> dict:
    """The stage configs every trial starts from (validated now, before anything runs), as dicts: mntp
    and simcse, or contrastive alone."""
    placeholder = child(cfg.output, "trials", "TRIAL")
    if cfg.contrastive_config:
        inputs = [f"{key}={absolute(getattr(cfg, key))}" for key in ("pairs", "mntp", "simcse") if getattr(cfg, key)]
        if bool(cfg.mntp) != bool(cfg.simcse):  # the search's start replaces the config's
            inputs.append("simcse=null" if cfg.mntp else "mntp=null")
        stages = {"contrastive": load_config(ContrastiveConfig, cfg.contrastive_config, [
            *cfg.contrastive_overrides, *inputs, f"output={child(placeholder, 'contrastive')}"])}
    else:
        data = absolute(cfg.data)
        stages = {"mntp": load_config(MNTPConfig, cfg.mntp_config,
                                      [*cfg.mntp_overrides, f"data={data}", f"output={child(placeholder, 'mntp')}"]),
                  "simcse": load_config(SimCSEConfig, cfg.simcse_config,
                                        [*cfg.simcse_overrides, f"data={data}", f"mntp={child(placeholder, 'mntp')}",
                                         f"output={child(placeholder, 'simcse')}"])}
    for stage in stages.values():
        if not stage.run.dev_blocks:
            raise ConfigError("the search's objective is the dev score: run.dev_blocks must be > 0 in every stage")
        if os.path.exists(stage.model.name_or_path):  # a local model folder: trials run in their own directories
            stage.model.name_or_path = absolute(stage.model.name_or_path)
    return {"output": cfg.output, **{name: to_dict(stage) for name, stage in stages.items()}}


def trial_stages(settings: dict) -> list[str]:
    """The stages a trial trains, in order."""
    return [stage for stage in ("mntp", "simcse", "contrastive") if stage in settings]


def _check_contrastive_inputs(contrastive: dict) -> None:
    start = "simcse" if contrastive["simcse"] else "mntp"
    for key, name in (("pairs", "manifest.json"), (start, CONFIG_NAME)):
        fs, path = resolve(contrastive[key])
        if not exists(fs, f"{path}/{name}"):
            raise Bg2VecError(f"{key}={redact(contrastive[key])} has no {name}: give the output of jobs/{key}.py")


def choose_searcher(choice: str) -> str:
    if choice == "auto":
        return "optuna" if _optuna_installed() else "random"
    if choice == "optuna" and not _optuna_installed():
        raise ConfigError("searcher=optuna needs optuna: pip install 'bg2vec[tune]' (or searcher=random)")
    return choice


def _optuna_installed() -> bool:
    return importlib.util.find_spec("optuna") is not None


def make_searcher(name: str, seed: int, max_concurrent: int):
    """The seeded searcher, limited to ``max_concurrent`` running trials (Tune ignores
    TuneConfig.max_concurrent_trials for a search algorithm passed in)."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if name == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(seed=seed), max_concurrent=max_concurrent)
    return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)


def trial_resources(settings: dict, driver_cpus: float) -> dict[str, float]:
    """What one trial holds at most: its driver plus the larger of its two stages' worker groups."""
    stages = [settings[stage]["scaling"] for stage in trial_stages(settings)]
    need = {"CPU": driver_cpus + max(s["num_workers"] * s["cpus_per_worker"] for s in stages)}
    gpus = max(s["num_workers"] if s["use_gpu"] else 0 for s in stages)
    return need | ({"GPU": gpus} if gpus else {})


def max_concurrent_trials(cluster: dict[str, float], need: dict[str, float]) -> int:
    """How many trials the cluster fits at once (at least 1: an autoscaler adds nodes for it)."""
    fits = [math.floor(cluster.get(key, 0.0) / amount + 1e-9) for key, amount in need.items() if amount > 0]
    return max(1, min(fits))


def _trial_dirname(trial) -> str:
    return trial.trial_id  # the trial's Tune directory and its models directory share the name


# ------------------------------------------------------------------------------------------- trial
def run_trial(params: dict, settings: dict) -> None:
    """One trial: MNTP with the sampled settings, then SimCSE from its output (or the contrastive stage
    alone). A stage whose model is already complete (a trial resumed by Tuner.restore) is not trained again."""
    from ray import tune

    from bg2vec.training.launch import run_stage

    trial_id = tune.get_context().get_trial_id()
    if "contrastive" in settings:
        contrastive = contrastive_trial_config(settings, params, child(settings["output"], "trials", trial_id),
                                               trial_id)
        if output_state(contrastive.output) != "complete":
            run_stage(contrastive, callbacks=[StageReport("contrastive", 0)])
        return
    mntp, simcse = trial_configs(settings, params, child(settings["output"], "trials", trial_id), trial_id)
    if output_state(mntp.output) != "complete":
        run_stage(mntp, callbacks=[StageReport("mntp", 0)])
    if output_state(simcse.output) != "complete":
        run_stage(simcse, callbacks=[StageReport("simcse", mntp.max_steps)])


def trial_configs(settings: dict, params: dict, trial_dir: str, trial_id: str) -> tuple[MNTPConfig, SimCSEConfig]:
    """The stage configs of one trial: the sampled settings, outputs under the trial's directory, and
    run names of its own (the stages' run.storage_path may be shared by all trials)."""
    mntp, simcse = copy.deepcopy(settings["mntp"]), copy.deepcopy(settings["simcse"])
    mntp |= {"output": child(trial_dir, "mntp"), "overwrite": True, "mask_ratio": params["mask_ratio"]}
    simcse |= {"output": child(trial_dir, "simcse"), "mntp": mntp["output"], "overwrite": True,
               "temperature": params["temperature"]}
    mntp["run"]["name"], simcse["run"]["name"] = f"mntp-{trial_id}", f"simcse-{trial_id}"
    if "mntp_lr" in params:
        mntp["optim"]["lr"] = params["mntp_lr"]
    if "simcse_lr" in params:
        simcse["optim"]["lr"] = params["simcse_lr"]
    if "attention_dropout" in params:
        simcse["attention_dropout"] = params["attention_dropout"]
    return (from_dict(MNTPConfig, mntp, where=f"trial {trial_id} mntp config"),
            from_dict(SimCSEConfig, simcse, where=f"trial {trial_id} simcse config"))


def contrastive_trial_config(settings: dict, params: dict, trial_dir: str, trial_id: str) -> ContrastiveConfig:
    """The contrastive config of one trial of a contrastive search: the sampled temperature (and learning
    rate), the output under the trial's directory and a run name of its own."""
    contrastive = copy.deepcopy(settings["contrastive"])
    contrastive |= {"output": child(trial_dir, "contrastive"), "overwrite": True, "temperature": params["temperature"]}
    contrastive["run"]["name"] = f"contrastive-{trial_id}"
    if "contrastive_lr" in params:
        contrastive["optim"]["lr"] = params["contrastive_lr"]
    return from_dict(ContrastiveConfig, contrastive, where=f"trial {trial_id} contrastive config")


class StageReport(TuneReportCallback):
    """Forwards a stage's validation reports (those with a dev_score) to Tune, with the stage and the
    trial_step; the reports in between carry nothing to decide on, and Optuna needs the metric in all."""

    def __init__(self, stage: str, offset: int):
        super().__init__()
        self.stage, self.offset = stage, offset

    def after_report(self, run_context, metrics, checkpoint) -> None:
        rank0 = metrics[0]
        if METRIC in rank0:
            super().after_report(run_context, [{**rank0, "stage": self.stage, TIME_ATTR: self.offset + rank0["step"]}],
                                 checkpoint)
