"""The GPU machine's kit (bench/gpu_kit.py, bench/gpu_kit_install.py): what travels, the slimming, the scripts'
python, the archive's round trip and the venv that sees its parent's packages. Nothing is downloaded: the
dependency graphs, lock and trees are made up here."""

from __future__ import annotations

import subprocess

import pytest
from packaging.requirements import Requirement

from conftest import REPO


@pytest.fixture
def kit(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import gpu_kit

    return gpu_kit


@pytest.fixture
def installer(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import gpu_kit_install

    return gpu_kit_install


LOCK = {"ray": "2.60.0", "fastapi": "0.165.0", "pydantic": "2.14.4", "annotated-types": "0.8.0",
        "starlette": "1.10.0", "py-spy": "0.4.3", "transformers": "5.24.0", "huggingface-hub": "2.4.0",
        "tokenizers": "0.23.3", "uvicorn": "0.55.0", "httptools": "0.9.0", "cupy-cuda12x": "13.0.0"}
GRAPH = {
    "ray": ["click>=7.0", "pydantic<3,>=2.5.0; extra == 'serve'", "fastapi>=0.133.0; extra == 'serve'",
            "cupy-cuda12x; extra == 'cgraph'", "py-spy>=0.4.0; python_version >= '3.12' and extra == 'serve'",
            "py-spy-legacy; python_version < '3.12' and extra == 'serve'", "uvicorn; extra == 'serve'"],
    "fastapi": ["starlette>=1.0", "pydantic>=2", "uvicorn[standard]; extra == 'all'"],
    "pydantic": ["annotated-types>=0.6", "typing-extensions>=4.6"],
    "transformers": ["huggingface-hub<3.0,>=1.3.0", "numpy>=1.17", "tokenizers<=0.23.3,>=0.22", "torch>=2.6"],
    "uvicorn": ["click>=7.0", "h11", "httptools>=0.6; extra == 'standard'"],
    "annotated-types": [], "starlette": ["anyio<5,>=3.6"], "py-spy": [], "huggingface-hub": ["hf-xet"],
    "tokenizers": ["huggingface-hub<3.0,>=0.16.4"], "httptools": []}


def fake_requires(asked):
    def requires(name, version):
        assert LOCK[name] == version
        asked.append(name)
        return GRAPH[name]
    return requires


def test_select_follows_locked_requirements_for_the_device_and_stops_at_what_it_has(kit):
    asked = []
    roots = [Requirement(r) for r in ["ray[serve]>=2.50", "torch>=2.4", "transformers>=5.24", "numpy>=1.26"]]
    selection = kit.select(roots, fake_requires(asked), LOCK, kit.target_environment("3.12"))
    assert selection.carried == {n: LOCK[n] for n in [
        "ray", "pydantic", "fastapi", "annotated-types", "starlette", "py-spy", "uvicorn", "transformers",
        "huggingface-hub", "tokenizers"]}  # not cupy (extra cgraph), not httptools (uvicorn's extra standard)
    assert selection.left == {
        "torch": "the device's CUDA build (2.11+cu130)", "numpy": "the device has it (2.5.2)",
        "click": "the device has it", "typing-extensions": "the device has it", "anyio": "the device has it",
        "h11": "the device has it", "hf-xet": "the device has it"}
    assert sorted(asked) == sorted(selection.carried)  # each graph read once, never past what stays behind


def test_select_evaluates_markers_for_the_target_python(kit):
    roots = [Requirement("ray[serve]")]
    with pytest.raises(kit.KitError, match=r"py-spy-legacy \(needed by ray 2.60.0: py-spy-legacy\) is not in "
                                           r"constraints.txt: run `make lock`"):
        kit.select(roots, fake_requires([]), LOCK, kit.target_environment("3.11"))


def test_select_adds_an_extra_to_a_package_already_carried(kit):
    roots = [Requirement("fastapi[all]"), Requirement("uvicorn")]  # uvicorn first plain, then uvicorn[standard]
    selection = kit.select(roots, fake_requires([]), LOCK, kit.target_environment("3.12"))
    assert "httptools" in selection.carried and "uvicorn" in selection.carried


def test_select_refuses_a_device_version_below_a_requirement_and_a_lock_that_misses_one(kit, monkeypatch):
    env = kit.target_environment("3.12")
    monkeypatch.delitem(kit.CARRY_OVER_DEVICE, "transformers")
    with pytest.raises(kit.KitError, match=r"pyproject.toml needs transformers>=5.24, the device has transformers "
                                           r"5.17.0: add transformers to CARRY_OVER_DEVICE"):
        kit.select([Requirement("transformers>=5.24")], fake_requires([]), LOCK, env)
    assert kit.select([Requirement("transformers>=5.0")], fake_requires([]), LOCK, env).carried == {}
    with pytest.raises(kit.KitError, match=r"pyproject.toml needs pydantic<2, the lock has pydantic 2.14.4"):
        kit.select([Requirement("pydantic<2")], fake_requires([]), LOCK, env)


def test_left_reason_names_the_never_carried_and_the_device_s_packages(kit):
    assert kit.left_reason("nvidia-cudnn-cu13") == "CUDA libraries of the device's torch"
    assert kit.left_reason("cuda-bindings") == "CUDA Python packages of the device's torch"
    assert kit.left_reason("triton") == "torch's compiler, matched to the device's torch"
    assert kit.left_reason("pyarrow") == "the device has it"
    assert kit.left_reason("transformers") is None and kit.left_reason("deepspeed") is None


def test_read_lock_and_roots(kit, tmp_path):
    lock = tmp_path / "constraints.txt"
    lock.write_text("# tested versions\nPyYAML==6.0.4\nhuggingface_hub==2.4.0\n\nray==2.60.0\n")
    assert kit.read_lock(lock) == {"pyyaml": "6.0.4", "huggingface-hub": "2.4.0", "ray": "2.60.0"}
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\ndependencies = ["ray[default,serve]>=2.50", "torch>=2.4"]\n')
    assert [str(r) for r in kit.root_requirements(pyproject)] == ["ray[default,serve]>=2.50", "torch>=2.4",
                                                                  *kit.EXTRA_ROOTS]


def _write(path, data: bytes = b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_prune_slims_a_ray_tree_and_keeps_what_the_dashboard_server_needs(kit, tmp_path):
    files = {"ray/jars/ray_dist.jar": 1000, "ray/rllib/algorithms/ppo.py": 300, "ray/data/keep.py": 7,
             "ray/data/tests/test_keep.py": 5, "ray/dashboard/client/build/index.html": 40,
             "ray/dashboard/client/build/static/js/main.js": 900, "ray/dashboard/client/build/static/favicon.svg": 20,
             "ray/dashboard/client/build/speedscope-1.5.3/index.html": 60, "hjson/tests/test_hjson.py": 30,
             "virtualenv/seed/wheels/embed/__init__.py": 9, "virtualenv/seed/wheels/embed/pip-26.3.whl": 500}
    for name, size in files.items():
        _write(tmp_path / name, b"x" * size)
    assert kit.prune(tmp_path) == {
        "ray/jars": 1000, "ray/rllib": 300, "ray/dashboard/client/build/static/*": 920,
        "ray/dashboard/client/build/speedscope-*": 60, "virtualenv/seed/wheels/embed/*.whl": 500, "*/tests": 30}
    left = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert left == {"ray/data/keep.py", "ray/data/tests/test_keep.py", "ray/dashboard/client/build/index.html",
                    "virtualenv/seed/wheels/embed/__init__.py"}
    assert (tmp_path / "ray/dashboard/client/build/static").is_dir()  # the server refuses to start without it


def test_scripts_get_a_neutral_shebang_and_then_the_venv_s_python(kit, installer, tmp_path):
    body = b"# -*- coding: utf-8 -*-\nimport sys\nfrom ray.scripts.scripts import main\nsys.exit(main())\n"
    scripts = {"ray": b"#!/work/main/.venv/bin/python\n" + body, "dsr": b"#!/usr/bin/python3.12\nprint(1)\n",
               "ds_ssh": b"#!/bin/bash\nexec ssh \"$@\"\n", "py-spy": b"\x7fELF\x02\x01\x01\x00binary"}
    for name, data in scripts.items():
        _write(tmp_path / "bin" / name, data)
    assert kit.neutral_shebangs(tmp_path / "bin") == ["dsr", "ray"]
    ray = (tmp_path / "bin/ray").read_bytes()
    assert ray == b"#!python\n" + body
    assert installer.script_with_python(ray, "/tmp/v/bin/python") == b"#!/tmp/v/bin/python\n" + body
    for name in ("ds_ssh", "py-spy"):
        data = (tmp_path / "bin" / name).read_bytes()
        assert data == scripts[name] and installer.script_with_python(data, "/tmp/v/bin/python") == data


def test_the_archive_unpacks_packages_into_site_packages_and_scripts_into_bin(kit, installer, tmp_path):
    tree = tmp_path / "tree"
    _write(tree / "pkg/__init__.py", b"VALUE = 7\n")
    _write(tree / "pkg-1.0.dist-info/entry_points.txt", b"[console_scripts]\ntool = pkg:main\n")
    _write(tree / "bin/tool", b"#!python\nimport pkg\n")
    (tree / "pkg/empty").mkdir()
    archive = tmp_path / "kit.tar.xz"
    kit.pack(tree, archive)
    assert archive.read_bytes()[:6] == b"\xfd7zXZ\x00"  # xz
    site, bin_dir = tmp_path / "venv/site", tmp_path / "venv/bin"
    site.mkdir(parents=True)
    bin_dir.mkdir()
    assert installer.unpack(archive, site, bin_dir) == ["tool"]
    assert sorted(str(p.relative_to(site)) for p in site.rglob("*")) == [
        "pkg", "pkg-1.0.dist-info", "pkg-1.0.dist-info/entry_points.txt", "pkg/__init__.py", "pkg/empty"]
    tool = bin_dir / "tool"
    assert tool.read_bytes() == f"#!{bin_dir / 'python'}\nimport pkg\n".encode() and tool.stat().st_mode & 0o111


def test_install_says_what_to_do_when_the_kit_is_missing(installer, tmp_path):
    with pytest.raises(SystemExit, match=r"no kit for Python 3.12 at .*bg2vec-gpu-kit-cp312.tar.xz: build it "
                                         r"where the package registry is reachable"):
        installer.kit_files(tmp_path / "gpu_kit", "3.12")
    (tmp_path / "bg2vec-gpu-kit-cp311.tar.xz").write_bytes(b"")
    (tmp_path / "bg2vec-gpu-kit-cp311.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"\(found: bg2vec-gpu-kit-cp311.tar.xz\): .*--python-version 3.12"):
        installer.kit_files(tmp_path, "3.12")
    assert installer.kit_files(tmp_path, "3.11") == (tmp_path / "bg2vec-gpu-kit-cp311.json",
                                                     tmp_path / "bg2vec-gpu-kit-cp311.tar.xz")


def test_the_venv_sees_the_packages_of_the_venv_that_made_it(installer, tmp_path):
    """This test runs in the project's .venv, as the installer runs in the device's /opt/torch/.venv: a new
    venv's --system-site-packages reaches the base python, not that venv; the .pth reaches it, .pth files
    included (bg2vec is an editable install of .venv)."""
    (tmp_path / "venv").mkdir()
    with pytest.raises(SystemExit, match="exists and was not made by this script"):
        installer.make_venv(tmp_path / "venv")
    packages = installer.make_venv(tmp_path / "new")
    assert packages.is_dir() and (tmp_path / "new" / installer.MARKER).exists()
    code = "import sys, importlib.util; print(sys.prefix); print(importlib.util.find_spec('bg2vec').origin)"
    found = subprocess.run([str(tmp_path / "new/bin/python"), "-c", code], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60)  # (not the repository: python -c finds packages in its folder)
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == [str(tmp_path / "new"), str(REPO / "bg2vec" / "__init__.py")]
    installer.make_venv(tmp_path / "new")  # made by this script: replaced
