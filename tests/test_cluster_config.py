"""The cluster files users start clusters with, checked offline (no cloud, no credentials, no network).

- ``cluster.yaml`` (the Ray cluster launcher, AWS) goes through what ``ray up`` does before it talks to
  AWS: ``prepare_config`` (the AWS defaults merged in, per-type worker limits filled) and
  ``validate_config`` (Ray's own ``ray-schema.json`` plus its cross-checks). Its ``node_config``s, which
  Ray passes to EC2 untouched, are checked against botocore's model of the RunInstances request.
  What cannot be checked offline: that the AMI parameter, instance profile, instance types and spot
  capacity exist in the account and region.
- ``deploy/kuberay/rayjob-mntp.yaml`` (KubeRay) is parsed and checked against what KubeRay and Ray
  need; no KubeRay CRD schema ships in a Python package, so it is not validated against one.

Both: the image's Ray is the installed (locked) Ray, the head never gets GPUs or work, GPU groups scale
from 0, the documented job commands load with their configs, and the bggpt-7b presets fit the GPU nodes.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import math
import re
import shlex
import socket
import sys
from pathlib import Path

import pytest
import ray
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from bg2vec.config import load_config
from bg2vec.storage import is_local
from bg2vec.training.config import MNTPConfig, RunSettings

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster.yaml"
RAYJOB = ROOT / "deploy" / "kuberay" / "rayjob-mntp.yaml"
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
IMAGE = re.compile(r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>3\d+)-gpu$")
PYTHON_TAG = "311"  # the images' Python (3.11, as in the Makefile's venv)

# vCPUs, GPUs and GPU model (Ray's accelerator_type) of the EC2 instance types cluster.yaml may use. AWS
# publishes these through describe-instance-types, which needs credentials: a new type goes here.
INSTANCES = {
    "m6i.2xlarge": (8, 0, None), "m6i.4xlarge": (16, 0, None), "m6i.8xlarge": (32, 0, None),
    "m6i.16xlarge": (64, 0, None), "m7i.8xlarge": (32, 0, None),
    "p4d.24xlarge": (96, 8, "A100"), "p4de.24xlarge": (96, 8, "A100"),
    "p5.48xlarge": (192, 8, "H100"), "p5e.48xlarge": (192, 8, "H200"), "p5en.48xlarge": (192, 8, "H200"),
    "g6e.12xlarge": (48, 4, "L40S"), "g6e.48xlarge": (192, 8, "L40S"),
}


def _constraint(name: str) -> str:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            package, version = line.split("==", 1)
            pins[canonicalize_name(package)] = version.strip()
    return pins[canonicalize_name(name)]


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _load(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(self, address):
        raise AssertionError(f"network access to {address} during an offline config check")
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def cluster() -> dict:
    return _load(CLUSTER)


def _prepare_and_validate(config: dict) -> dict:
    """What `ray up` does with the file before it contacts the cloud provider."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _worker_types(config: dict) -> dict[str, dict]:
    return {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}


def _instance(node_type: dict) -> tuple[int, int, str | None]:
    instance_type = node_type["node_config"]["InstanceType"]
    assert instance_type in INSTANCES, f"{instance_type}: add its vCPUs and GPUs to INSTANCES in this test"
    return INSTANCES[instance_type]


# ---------------------------------------------------------------------------------------------- cluster.yaml


def test_cluster_yaml_passes_rays_own_validation(cluster, offline):
    prepared = _prepare_and_validate(cluster)
    assert prepared["provider"]["type"] == "aws"
    assert set(prepared["available_node_types"]) == set(cluster["available_node_types"])
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0
    assert prepared["idle_timeout_minutes"] == cluster["idle_timeout_minutes"]


def test_ray_schema_rejects_unknown_keys_where_the_typo_tests_put_them():
    """The levels the typo tests below mutate are closed in Ray's schema. Others are open on purpose:
    `provider` takes provider-specific keys and `node_config` is passed to the cloud API untouched
    (test_node_configs_are_valid_run_instances_requests covers those)."""
    import json

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert schema["properties"]["docker"]["additionalProperties"] is False
    assert schema["properties"]["available_node_types"]["patternProperties"][".*"]["additionalProperties"] is False
    assert schema["properties"]["provider"]["additionalProperties"] is True


def _rename(mapping: dict, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


def _a_gpu_type(config: dict) -> dict:
    return next(t for t in _worker_types(config).values() if t["resources"].get("GPU"))


TYPOS = {
    "top-level key": lambda c: _rename(c, "idle_timeout_minutes", "idle_timeout_minute"),
    "node type key": lambda c: _rename(_a_gpu_type(c), "min_workers", "min_worker"),
    "docker key": lambda c: _rename(c["docker"], "pull_before_run", "pull_before_runs"),
    "string for a number": lambda c: _a_gpu_type(c).__setitem__("max_workers", "4"),
    "fractional GPU count": lambda c: _a_gpu_type(c)["resources"].__setitem__("GPU", 7.5),
    "misspelt head type": lambda c: c.__setitem__("head_node_type", c["head_node_type"] + "_"),
}


@pytest.mark.parametrize("mutate", TYPOS.values(), ids=TYPOS.keys())
def test_cluster_yaml_typos_fail_validation(cluster, offline, mutate):
    import jsonschema

    broken = copy.deepcopy(cluster)
    mutate(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        _prepare_and_validate(broken)


def test_node_configs_are_valid_run_instances_requests(cluster):
    """Ray hands each node_config to EC2's RunInstances (adding MinCount/MaxCount and tags): botocore's
    service model, shipped with botocore, knows every parameter name and type."""
    botocore_session = pytest.importorskip("botocore.session")
    from botocore.validate import ParamValidator

    shape = botocore_session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    for name, node_type in cluster["available_node_types"].items():
        report = ParamValidator().validate({**node_type["node_config"], "MinCount": 1, "MaxCount": 1}, shape)
        assert not report.has_errors(), f"{name}.node_config: {report.generate_report()}"
    typo = {**_a_gpu_type(cluster)["node_config"], "MinCount": 1, "MaxCount": 1}
    _rename(typo, "InstanceType", "InstanceTyp")
    assert "Unknown parameter" in ParamValidator().validate(typo, shape).generate_report()


def test_head_runs_no_work_and_has_no_gpus(cluster):
    head = cluster["available_node_types"][cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"].get("CPU") == 0, "tasks and actors must not land on the head"
    assert _instance(head)[1] == 0, "the head's instance type has GPUs"


def test_worker_types_scale_from_zero_with_the_instances_resources(cluster):
    workers = _worker_types(cluster)
    assert any(t["resources"].get("GPU") for t in workers.values()), "no GPU worker type"
    for name, node_type in workers.items():
        vcpus, gpus, model = _instance(node_type)
        resources = node_type["resources"]
        assert node_type.get("min_workers") == 0, f"{name}: min_workers must be 0 (nodes only on demand)"
        assert 1 <= node_type["max_workers"] <= cluster["max_workers"], name
        assert resources.get("GPU", 0) == gpus, f"{name}: {node_type['node_config']['InstanceType']} has {gpus} GPUs"
        assert 0 < resources.get("CPU", 0) <= vcpus, f"{name}: CPU must be 1..{vcpus}"
        accelerators = [key.split(":", 1)[1] for key in resources if key.startswith("accelerator_type:")]
        assert accelerators in ([], [model]), f"{name}: accelerator_type:{accelerators} but the GPUs are {model}"
        assert "IamInstanceProfile" in node_type["node_config"], f"{name}: no instance profile, no S3 access"


def _gpu_presets() -> list[Path]:
    return sorted(p for p in ROOT.glob("configs/*/*.yaml") if p.stem in ("mntp", "simcse")
                  and (_load(p).get("scaling") or {}).get("use_gpu"))


def _fits(node: tuple[int, int], nodes_at_most: int, num_workers: int, cpus_per_worker: float) -> bool:
    cpus, gpus = node
    return (math.ceil(num_workers / gpus) <= nodes_at_most
            and min(num_workers, gpus) * cpus_per_worker <= cpus)


@pytest.mark.parametrize("preset", _gpu_presets(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_gpu_presets_fit_every_gpu_worker_type(cluster, preset):
    """Without scaling.accelerator_type the autoscaler may pick any GPU type: the job must fit each."""
    scaling = _load(preset)["scaling"]
    for name, node_type in _worker_types(cluster).items():
        resources = node_type["resources"]
        if resources.get("GPU"):
            assert _fits((resources["CPU"], resources["GPU"]), node_type["max_workers"],
                         scaling["num_workers"], scaling.get("cpus_per_worker", 1.0)), f"{preset} on {name}"


def _images(config: dict) -> list[str]:
    docker = config["docker"]
    images = [docker[key] for key in ("image", "head_image", "worker_image") if key in docker]
    images += [t["docker"]["worker_image"] for t in config["available_node_types"].values()
               if "worker_image" in t.get("docker", {})]
    return images


def test_image_is_the_locked_ray_and_python(cluster):
    requires_python = _pyproject()["requires-python"]
    from packaging.specifiers import SpecifierSet

    assert _images(cluster)
    for image in _images(cluster):
        match = IMAGE.match(image)
        assert match, f"{image}: expected rayproject/ray:<ray version>-py311-gpu (not the frozen ray-ml images)"
        assert match["ray"] == ray.__version__, f"{image}: the installed Ray is {ray.__version__}"
        assert match["py"] == PYTHON_TAG, f"{image}: the project's images are py{PYTHON_TAG}"
        assert Version(f"3.{match['py'][1:]}") in SpecifierSet(requires_python)
    assert _constraint("ray") == ray.__version__, "requirements/constraints.txt pins another Ray than the installed"


def test_idle_timeout_is_set(cluster):
    assert 0 < cluster["idle_timeout_minutes"] <= 60


def _pip_installs(command: str) -> list[tuple[str | None, list[str]]]:
    """(constraints file, requirements) of every `pip install` in a shell command."""
    installs = []
    for part in re.split(r"&&|;|\|\|", command):
        argv = shlex.split(part)
        if argv[:2] != ["pip", "install"] and argv[1:4] != ["-m", "pip", "install"]:
            continue
        args = argv[argv.index("install") + 1:]
        constraints, requirements, i = None, [], 0
        while i < len(args):
            if args[i] in ("-c", "--constraint"):
                constraints, i = args[i + 1], i + 2
                continue
            if not args[i].startswith("-"):
                requirements.append(args[i])
            i += 1
        installs.append((constraints, requirements))
    return installs


def _local_path(config: dict, remote: str) -> Path:
    """The file of this checkout that `ray up` puts at `remote` (through file_mounts)."""
    for target, source in config["file_mounts"].items():
        if remote == target or remote.startswith(target.rstrip("/") + "/"):
            return (ROOT / source / remote[len(target):].lstrip("/")).resolve()
    raise AssertionError(f"{remote} is not under any file mount")


def test_setup_installs_pyprojects_dependencies_at_the_locked_versions(cluster):
    commands = cluster["setup_commands"] + cluster["head_setup_commands"] + cluster["worker_setup_commands"]
    commands += [c for t in cluster["available_node_types"].values() for c in t.get("worker_setup_commands", [])]
    installs = [install for command in commands for install in _pip_installs(command)]
    assert installs, "setup_commands install nothing"
    installed = {}
    for constraints, requirements in installs:
        assert constraints, f"pip install {' '.join(requirements)} without -c (the locked versions)"
        assert _local_path(cluster, constraints) == CONSTRAINTS.resolve()
        for requirement in map(Requirement, requirements):
            assert not requirement.specifier or requirement.specifier == Requirement(
                f"x=={_constraint(requirement.name)}").specifier, f"{requirement}: not the locked version"
            installed.setdefault(canonicalize_name(requirement.name), set()).update(requirement.extras)
    dependencies = _pyproject()["dependencies"]
    for dependency in map(Requirement, dependencies):
        name = canonicalize_name(dependency.name)
        assert name in installed, f"pyproject.toml's dependency {dependency.name} is not installed on the nodes"
        assert dependency.extras <= installed[name], f"{dependency}: extras {dependency.extras - installed[name]}"
    assert "torch" in installed and any(f"torch=={_constraint('torch')}" in c for c in commands), \
        "torch must be installed pinned first (the CUDA build of the locked version)"


def _documented_commands(path: Path) -> list[tuple[str, list[str]]]:
    """(script, arguments) of every `python jobs/...` in the `ray job submit` examples of a file's comments."""
    lines = [line.strip().removeprefix("#").strip() for line in path.read_text().splitlines()
             if line.lstrip().startswith("#")]
    commands, i = [], 0
    while i < len(lines):
        if lines[i].startswith("ray job submit"):
            text = lines[i]
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text[:-1] + " " + lines[i]
            argv = shlex.split(text)
            assert "--working-dir" in argv, f"{text}: the code ships with --working-dir ."
            argv = argv[argv.index("--") + 1:]
            parts = ([shlex.split(p) for p in argv[2].split("&&")] if argv[:2] == ["bash", "-c"] else [argv])
            commands += [(p[1], p[2:]) for p in parts if p[:1] == ["python"] and p[1].startswith("jobs/")]
        i += 1
    return commands


CLUSTER_COMMANDS = _documented_commands(CLUSTER)


def _config_class(script: Path) -> type:
    """The config dataclass a job script parses its command line into."""
    spec = importlib.util.spec_from_file_location(f"_job_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # the scripts only run under __main__
    classes = {v for v in vars(module).values() if isinstance(v, type) and dataclasses.is_dataclass(v)
               and v.__name__.endswith("Config") and v.__module__.startswith("bg2vec")}
    assert len(classes) == 1, f"{script}: config class among {classes}?"
    return classes.pop()


def _check_job_command(script: str, args: list[str]):
    path = ROOT / script
    assert path.is_file(), f"{script}, named in a documented command, does not exist (renamed?)"
    assert args[0] == "--config", f"{script} {args}: --config FILE first"
    assert (ROOT / args[1]).is_file(), f"{args[1]} does not exist"
    return load_config(_config_class(path), str(ROOT / args[1]), args[2:])


def test_cluster_yaml_documents_every_stage():
    scripts = {script for script, _ in CLUSTER_COMMANDS}
    assert {"jobs/prepare_data.py", "jobs/mntp.py", "jobs/simcse.py", "jobs/pairs.py", "jobs/contrastive.py",
            "jobs/evaluate.py"} <= scripts
    assert "run.storage_path" in CLUSTER.read_text()
    assert "storage_path" in {f.name for f in dataclasses.fields(RunSettings)}


@pytest.mark.parametrize(("script", "args"), CLUSTER_COMMANDS, ids=[s for s, _ in CLUSTER_COMMANDS])
def test_cluster_yaml_job_commands_load(script, args):
    """The documented commands name existing scripts and configs and only keys the configs have."""
    cfg = _check_job_command(script, args)
    for key in ("data", "output"):
        if isinstance(getattr(cfg, key, None), str):
            assert not is_local(getattr(cfg, key)), f"{script}: {key}= must be shared storage on a cluster"


# ---------------------------------------------------------------------------------- KubeRay RayJob manifest


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return _load(RAYJOB)


def _pods(rayjob: dict) -> list[tuple[str, dict, dict]]:
    """(name, rayStartParams, pod spec) of the head and every worker group."""
    spec = rayjob["spec"]["rayClusterSpec"]
    head = spec["headGroupSpec"]
    return [("head", head["rayStartParams"], head["template"]["spec"])] + [
        (group["groupName"], group.get("rayStartParams", {}), group["template"]["spec"])
        for group in spec["workerGroupSpecs"]]


def _gpus(pod: dict) -> int:
    limits = [int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) for c in pod["containers"]]
    return sum(limits)


def _cpus(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_rayjob_is_a_self_cleaning_autoscaling_ray_job(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    cluster_spec = spec["rayClusterSpec"]
    assert cluster_spec["rayVersion"] == ray.__version__ == _constraint("ray"), \
        f"rayVersion {cluster_spec['rayVersion']}, installed {ray.__version__}, locked {_constraint('ray')}"
    assert cluster_spec["enableInTreeAutoscaling"] is True


def test_rayjob_entrypoint_runs_mntp_with_a_preset_that_fits(rayjob):
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:2] == ["python", "jobs/mntp.py"]
    cfg = _check_job_command(argv[1], argv[2:])
    assert isinstance(cfg, MNTPConfig)
    assert cfg.scaling.use_gpu
    assert not is_local(cfg.data) and not is_local(cfg.output), "pods share no disk: data= and output= in S3"
    groups = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    fits = [g for g in groups if _gpus(g["template"]["spec"]) and _fits(
        (sum(_cpus(c["resources"]["limits"]["cpu"]) for c in g["template"]["spec"]["containers"]),
         _gpus(g["template"]["spec"])), g["maxReplicas"], cfg.scaling.num_workers, cfg.scaling.cpus_per_worker)]
    assert fits, f"no worker group holds {cfg.scaling.num_workers} GPU workers x {cfg.scaling.cpus_per_worker} CPUs"


def test_rayjob_runtime_env_installs_the_locked_versions(rayjob):
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    assert set(env) <= {"working_dir", "pip", "env_vars", "config", "py_modules", "excludes"}, set(env)
    RuntimeEnv(**env)  # Ray's own validation of every field (offline: nothing is fetched)
    assert env["working_dir"].startswith("https://") and env["working_dir"].endswith(".zip")
    options = env["pip"]["pip_install_options"]
    assert options[options.index("-c") + 1].endswith("/requirements/constraints.txt")
    assert f"torch=={_constraint('torch')}" in env["pip"]["packages"]


def test_rayjob_pods(rayjob):
    for name, params, pod in _pods(rayjob):
        assert all(isinstance(v, str) for v in params.values()), f"{name}: rayStartParams values must be strings"
        for container in pod["containers"]:
            match = IMAGE.match(container["image"])
            assert match and match["ray"] == ray.__version__ and match["py"] == PYTHON_TAG, container["image"]
            resources = container.get("resources", {})
            assert resources.get("requests", {}).get("nvidia.com/gpu", 0) in (0, resources["limits"].get(
                "nvidia.com/gpu")), f"{name}: GPU requests and limits differ"
        mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        assert "/dev/shm" in mounts, f"{name}: no memory volume at /dev/shm (NCCL, object store)"
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        if name == "head":
            assert _gpus(pod) == 0, "the head must not hold GPUs"
            assert params.get("num-cpus") == "0", "the head must not run tasks (num-cpus: '0')"
    groups = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpu_groups = [g for g in groups if _gpus(g["template"]["spec"])]
    assert gpu_groups, "no GPU worker group"
    for group in groups:
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], group["groupName"]
    for group in gpu_groups:
        pod, name = group["template"]["spec"], group["groupName"]
        assert group["minReplicas"] == 0, f"{name}: GPU pods only on demand"
        if "num-gpus" in group["rayStartParams"]:
            assert int(group["rayStartParams"]["num-gpus"]) == _gpus(pod), f"{name}: num-gpus != nvidia.com/gpu"
        assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])), f"{name}: GPU taint"
        env = {e["name"]: e for c in pod["containers"] for e in c.get("env", [])}
        assert "secretKeyRef" in env["HF_TOKEN"]["valueFrom"], f"{name}: HF_TOKEN from a Secret"
