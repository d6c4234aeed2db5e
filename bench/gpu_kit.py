"""The GPU machine's kit: the locked packages that machine lacks, as one archive that travels with the tree.

    .venv/bin/python bench/gpu_kit.py        # gpu_kit/bg2vec-gpu-kit-cp312.tar.xz + .json (about 4 minutes)
    .venv/bin/python bench/gpu_kit.py --python-version 3.11 --output /tmp/kit311   # for a python 3.11 (tests)
    python3 bench/gpu_kit_install.py         # then, on the GPU machine: the venv (see that script)

Run here, where the package registry is reachable, with the project's .venv. The GPU machine this project
is sometimes lent (one H100/H200, Python 3.12, torch 2.11+cu130 and a few hundred packages preinstalled, no
Ray, no DeepSpeed, no network) receives the working tree and at most 64 MiB with it, so the kit is refused
over 55 MiB (``--max-mib``); gpu_kit/ (git-ignored) is carried with the working tree. The default targets
that machine's CPython 3.12; ``--python-version`` builds for another (3.11: this machine's, to try the install).

What travels: bg2vec's dependencies (pyproject.toml, Ray with the extras the jobs use) and ``EXTRA_ROOTS``,
followed through their requirements at the versions locked in requirements/constraints.txt, stopping at
what the device has (``DEVICE_HAS``) or must keep (``NEVER_CARRY``: torch is the device's CUDA build).
``CARRY_OVER_DEVICE`` lists the packages that travel although the device has them, as the venv needs newer
ones: transformers (the device's 5.17 is below bg2vec's floor 5.24), sentence-transformers (6.0.1, below the
floor 6.2), and tokenizers, huggingface_hub and peft at the versions transformers 5.24 was tested with. The
graph is read from this environment's installed metadata (the .venv holds exactly the lock, which is
checked), so nothing is resolved anew; a requirement that a known device version does not meet stops the
build. DeepSpeed has no wheel on PyPI: its wheel is built here, pure Python with no prebuilt ops (they
compile on first use, as in the .venv).

The wheels are installed with ``pip --target`` for the device's platform (411 MiB for Ray 2.60 and the lock
of 2026-12), slimmed (``PRUNE``: Ray's Java, RLlib and dashboard web assets, virtualenv's bundled wheels, 53
MiB; ``STRIP``: 34 MiB of symbols from Ray's programs), console scripts get the neutral ``#!python`` line
that the installer points at the venv's python, and the tree is packed as tar.xz (50 MiB) with a manifest
(versions, sizes, what was left out and why) written last. bg2vec itself travels as the working tree.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "constraints.txt"
MIB = 2**20

# ---- What travels and what does not, with the reasons (the one place to change them) -------------------

# Never carried: the device's own CUDA build of torch and what comes with it (a wheel from here would be
# another build, gigabytes, and would shadow the one that matches the driver).
NEVER_CARRY = {
    "torch": "the device's CUDA build (2.11+cu130)",
    "triton": "torch's compiler, matched to the device's torch",
    "nvidia-*": "CUDA libraries of the device's torch",
    "cuda-*": "CUDA Python packages of the device's torch",
}

# The device's image ('cuda'), as read on such a machine on 2026-11-17, with the versions read there; None:
# present, version not read (assumed to meet the requirements; bench/gpu_kit_install.py runs `pip check`).
DEVICE_HAS: dict[str, str | None] = {name: None for name in """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
    certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
    cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
    flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
    huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
    jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
    linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
    mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
    numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax
    opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
    portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
    pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
    python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
    scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
    simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
    threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
    torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3
    uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp""".split()} | {
    "accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2", "safetensors": "0.8.0",
    "sentence-transformers": "6.0.1", "tokenizers": "0.23.2", "torch": "2.11.0", "transformers": "5.17.0",
    "triton": "3.6.0", "sentencepiece": "0.2.2", "tiktoken": "0.14.0"}

# Carried although the device has them (the newer, locked version shadows the device's in the venv).
CARRY_OVER_DEVICE = {
    "transformers": "the device's 5.17 is below bg2vec's floor 5.24 (bg2vec/_compat.py)",
    "sentence-transformers": "the device's 6.0.1 is below bg2vec's floor 6.2 (jobs/export.py, evaluation)",
    "tokenizers": "the version transformers 5.24 was tested with here (the device's: 0.23.2)",
    "huggingface-hub": "the version transformers 5.24 was tested with here (the device's: 1.33.0)",
    "peft": "the version bg2vec's LoRA code was tested with (the device's was not read)",
}

# Roots beside pyproject's dependencies.
EXTRA_ROOTS = {
    "openai": "the GPU end-to-end run checks the served API with the official client (a dev dependency)",
}

# Packages with no wheel on PyPI: built here with this environment's torch (pure Python, ops compile on use).
SDIST_ONLY = {"deepspeed": "published as a source distribution only"}

# Removed from the installed tree (paths under it; '*' matches within one name).
PRUNE = {
    "ray/jars": "Ray's Java workers (34 MB): bg2vec is Python only",
    "ray/rllib": "reinforcement learning: unused",
    # the dashboard's server refuses to start without client/build and client/build/static (aiohttp serves
    # it), so those stay, empty: `ray job`, the REST and State APIs work, the web page stays blank
    "ray/dashboard/client/build/static/*": "the dashboard web client's scripts and styles",
    "ray/dashboard/client/build/speedscope-*": "the web client's profile viewer",
    "virtualenv/seed/wheels/embed/*.whl": "pip/setuptools to seed Ray's runtime_env pip venvs, which need the "
                                          "network the device has not",
    "*/tests": "test suites of the carried packages",
}

# Ray's native programs ship with their symbol tables (117 MB): `strip --strip-unneeded` keeps what they need
# to run (they carry no RPATH that a strip could damage).
STRIP = {
    "ray/_raylet.so": "the core worker, loaded by every Ray process",
    "ray/core/src/ray/gcs/gcs_server": "the head's global control store",
    "ray/core/src/ray/raylet/raylet": "each node's scheduler",
}

# The device's glibc is not read; its torch wheels are manylinux_2_28, so it has at least that.
PLATFORMS = ["manylinux2014_x86_64", "manylinux1_x86_64"] + [f"manylinux_2_{n}_x86_64" for n in range(5, 29)]

# ---------------------------------------------------------------------------------------------------------


class KitError(Exception):
    """The kit cannot be built as asked: the message says why and what to do."""


@dataclass
class Selection:
    carried: dict[str, str] = field(default_factory=dict)
    """name -> locked version: what travels."""
    left: dict[str, str] = field(default_factory=dict)
    """name -> why it does not travel (the device has it, or must keep its own)."""


def left_reason(name: str) -> str | None:
    """Why ``name`` stays behind, or None when it travels."""
    if reason := next((why for pattern, why in NEVER_CARRY.items() if fnmatch(name, pattern)), None):
        return reason
    if name in DEVICE_HAS and name not in CARRY_OVER_DEVICE:
        return "the device has it" + (f" ({DEVICE_HAS[name]})" if DEVICE_HAS[name] else "")
    return None


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """``name==version`` lines of the lock, by canonical name."""
    lock = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            lock[canonicalize_name(req.name)] = spec.version
    return lock


def root_requirements(pyproject: Path = REPO / "pyproject.toml") -> list[Requirement]:
    import tomllib  # (Python 3.11+, like the project's .venv; bg2vec itself supports 3.10)

    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return [Requirement(r) for r in [*deps, *EXTRA_ROOTS]]


def target_environment(python_version: str) -> dict[str, str]:
    """Marker values of the device: CPython ``python_version`` on x86-64 Linux."""
    return default_environment() | {
        "python_version": python_version, "python_full_version": f"{python_version}.0",
        "implementation_name": "cpython", "platform_python_implementation": "CPython",
        "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix", "platform_machine": "x86_64"}


def select(roots: Iterable[Requirement], requires: Callable[[str, str], list[str]], lock: dict[str, str],
           environment: dict[str, str]) -> Selection:
    """What travels: the roots and their requirements (``requires(name, version)``, markers evaluated
    for ``environment``), each at its locked version, not followed past what stays behind."""
    selection = Selection()
    extras_seen: dict[str, set[str]] = {}
    pending = [("pyproject.toml", r) for r in roots if r.marker is None or r.marker.evaluate(environment)]
    while pending:
        parent, req = pending.pop()
        name = canonicalize_name(req.name)
        if reason := left_reason(name):
            device_version = DEVICE_HAS.get(name)
            if device_version and not req.specifier.contains(device_version, prereleases=True):
                raise KitError(f"{parent} needs {req}, the device has {name} {device_version}: add {name} "
                               "to CARRY_OVER_DEVICE in bench/gpu_kit.py")
            selection.left[name] = reason
            continue
        if name not in lock:
            raise KitError(f"{name} (needed by {parent}: {req}) is not in {LOCK.name}: run `make lock`")
        version = lock[name]
        if not req.specifier.contains(version, prereleases=True):
            raise KitError(f"{parent} needs {req}, the lock has {name} {version}")
        extras = ({""} | {canonicalize_name(e) for e in req.extras}) - extras_seen.setdefault(name, set())
        if not extras:
            continue
        extras_seen[name] |= extras
        selection.carried[name] = version
        for line in requires(name, version):
            dep = Requirement(line)
            if dep.marker is None or any(dep.marker.evaluate(environment | {"extra": e}) for e in extras):
                dep.marker = None  # (evaluated with this package's extras; messages name the requirement alone)
                pending.append((f"{name} {version}", dep))
    return selection


def installed_requires(name: str, version: str) -> list[str]:
    """``name``'s requirements from this environment's metadata, which must be the locked version."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise KitError(f"{name} {version} is not installed in {sys.prefix}: run this script with the "
                       "project's .venv (make demo)") from None
    if dist.version != version:
        raise KitError(f"{sys.prefix} has {name} {dist.version}, the lock {version}: rebuild it (make)")
    return dist.requires or []


def _bytes(path: Path) -> int:
    files = [path] if path.is_file() else path.rglob("*")
    return sum(f.stat().st_size for f in files if f.is_file() and not f.is_symlink())


def prune(tree: Path, patterns: Iterable[str] = PRUNE) -> dict[str, int]:
    """Remove the files and folders matching ``patterns`` (relative to ``tree``); returns pattern -> bytes
    freed, for the patterns that matched."""
    removed = {}
    for pattern in patterns:
        for path in tree.glob(pattern):
            removed[pattern] = removed.get(pattern, 0) + _bytes(path)
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    return removed


def strip(tree: Path, paths: Iterable[str] = STRIP) -> int:
    """Strip the symbol tables of ``paths`` (all must exist); returns the bytes freed."""
    if shutil.which("strip") is None:
        raise KitError("`strip` is missing: install binutils (apt-get install binutils)")
    files = [tree / p for p in paths]
    if missing := [str(f) for f in files if not f.is_file()]:
        raise KitError(f"nothing to strip at {', '.join(missing)}: update STRIP in bench/gpu_kit.py")
    before = sum(f.stat().st_size for f in files)
    subprocess.run(["strip", "--strip-unneeded", *map(str, files)], check=True)
    return before - sum(f.stat().st_size for f in files)


SHEBANG = re.compile(rb"^#!.*python[0-9.]*$")


def neutral_shebangs(bin_dir: Path) -> list[str]:
    """Give pip's scripts (whose first line names this machine's python) the wheel format's ``#!python``,
    which bench/gpu_kit_install.py replaces by the venv's python; returns the scripts' names."""
    names = []
    for script in sorted(bin_dir.iterdir()) if bin_dir.is_dir() else []:
        first, sep, rest = script.read_bytes().partition(b"\n")
        if SHEBANG.match(first):
            script.write_bytes(b"#!python" + sep + rest)
            names.append(script.name)
    return names


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], check=True)


def install_tree(selection: Selection, tree: Path, work: Path, python_version: str) -> None:
    """The carried packages, installed for the device's platform into ``tree`` (``--target`` layout)."""
    wheels = work / "wheels"
    for name in sorted(set(SDIST_ONLY) & set(selection.carried)):
        print(f"[kit] building {name} {selection.carried[name]}'s wheel ({SDIST_ONLY[name]})", flush=True)
        pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
            f"{name}=={selection.carried[name]}")
    abi = "cp" + python_version.replace(".", "")
    platform_args = [a for p in PLATFORMS for a in ("--platform", p)]
    print(f"[kit] installing {len(selection.carried)} packages for {abi} Linux x86-64 into {tree}", flush=True)
    pip("install", "-q", "--no-deps", "--no-compile", "--target", str(tree), *platform_args,
        "--python-version", python_version, "--implementation", "cp", "--abi", abi, "--only-binary=:all:",
        "--find-links", str(wheels), *[f"{n}=={v}" for n, v in sorted(selection.carried.items())])


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def pack(tree: Path, archive: Path) -> None:
    with tarfile.open(archive, "w:xz", preset=9) as tar:
        for path in sorted(tree.iterdir()):
            tar.add(path, arcname=path.name, filter=_anonymous)


def kit_name(python_version: str) -> str:
    return "bg2vec-gpu-kit-cp" + python_version.replace(".", "")


def build(python_version: str, output: Path, max_mib: float, work: Path) -> Path:
    """Select, install, slim and pack; returns the manifest's path. Refuses an archive over ``max_mib``."""
    selection = select(root_requirements(), installed_requires, read_lock(), target_environment(python_version))
    print(f"[kit] {len(selection.carried)} packages travel, {len(selection.left)} stay with the device's",
          flush=True)
    tree = work / "tree"
    install_tree(selection, tree, work, python_version)
    installed = _bytes(tree)
    pruned = prune(tree)
    stripped = strip(tree)
    scripts = neutral_shebangs(tree / "bin")
    unpacked = _bytes(tree)
    print(f"[kit] installed {installed / MIB:.0f} MiB, pruned {sum(pruned.values()) / MIB:.0f} MiB "
          f"({', '.join(pruned) or 'nothing'}), stripped {stripped / MIB:.0f} MiB of symbols from Ray's programs; "
          f"packing {unpacked / MIB:.0f} MiB as tar.xz (minutes)", flush=True)
    output.mkdir(parents=True, exist_ok=True)
    name = kit_name(python_version)
    archive, manifest = output / f"{name}.tar.xz", output / f"{name}.json"
    partial = output / f".{name}.tar.xz.partial"
    pack(tree, partial)
    size = partial.stat().st_size
    print(f"[kit] archive: {size / MIB:.1f} MiB (limit {max_mib:g} MiB)", flush=True)
    if size > max_mib * MIB:
        partial.unlink()
        raise KitError(f"the kit is {size / MIB:.1f} MiB, over the {max_mib:g} MiB limit: prune more (PRUNE) "
                       "or carry less (DEVICE_HAS, EXTRA_ROOTS)")
    manifest.unlink(missing_ok=True)  # (no manifest beside a half-replaced archive)
    os.replace(partial, archive)
    record = {
        "archive": archive.name, "archive_bytes": size, "unpacked_bytes": unpacked, "pruned_bytes": pruned,
        "stripped_bytes": stripped,
        "python_version": python_version, "platforms": PLATFORMS, "packages": dict(sorted(selection.carried.items())),
        "left_to_device": dict(sorted(selection.left.items())), "carried_over_device": CARRY_OVER_DEVICE,
        "scripts": scripts}
    manifest.with_suffix(".json.partial").write_text(json.dumps(record, indent=1) + "\n")
    os.replace(manifest.with_suffix(".json.partial"), manifest)
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python-version", default="3.12", help="the device's python (default 3.12)")
    parser.add_argument("--output", type=Path, default=REPO / "gpu_kit", help="folder for the archive and manifest")
    parser.add_argument("--max-mib", type=float, default=55.0, help="refuse a larger archive (default 55)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bg2vec-gpu-kit-") as work:
        try:
            manifest = build(args.python_version, args.output, args.max_mib, Path(work))
        except (KitError, subprocess.CalledProcessError) as e:
            raise SystemExit(f"[kit] {e}") from None
    packages = json.loads(manifest.read_text())["packages"]
    print(f"[kit] {manifest.with_suffix('.tar.xz')} ({len(packages)} packages: "
          f"{', '.join(f'{n} {v}' for n, v in packages.items())})")


if __name__ == "__main__":
    main()
