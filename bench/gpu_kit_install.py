"""On the GPU machine: the kit (bench/gpu_kit.py) as a venv over the device's torch, bg2vec from this tree.

    python3 bench/gpu_kit_install.py                  # gpu_kit/ -> /tmp/bg2vec-gpu, about a minute
    source /tmp/bg2vec-gpu/bin/activate               # then `ray start --head`, `ray job submit` (README runbook)

Runs with the device's python3 and the standard library alone (nothing can be fetched there). The venv is
made with --system-site-packages, and a .pth adds the site-packages of the python that runs this script:
on the device that python3 is itself a venv (/opt/torch/.venv), whose packages (torch among them)
--system-site-packages alone would not reach. The kit's packages come first on sys.path, so its
transformers 5.24 shadows the device's 5.17. Its console scripts (``ray``, ``serve``, ``deepspeed``...) get
the venv's python in their ``#!`` line. bg2vec is installed editable from this working tree, offline; the
script ends by printing the versions that will run, whether torch sees CUDA, and `pip check`'s findings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import site
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = ".bg2vec-gpu-kit"  # in a venv this script made (the only kind it replaces)
REPORT = """
import importlib.metadata as md, ray, deepspeed, transformers, peft, torch, bg2vec
print("[kit] " + ", ".join(f"{n} {md.version(n)}" for n in
      ("ray", "deepspeed", "transformers", "peft", "tokenizers", "huggingface_hub", "torch")))
print(f"[kit] ray from {ray.__file__}; transformers from {transformers.__file__}")
print(f"[kit] torch.cuda.is_available(): {torch.cuda.is_available()}"
      + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
"""


def kit_files(kit: Path, python_version: str) -> tuple[Path, Path]:
    """The manifest and archive of the kit for ``python_version``; exits with what to do when absent."""
    name = "bg2vec-gpu-kit-cp" + python_version.replace(".", "")
    manifest, archive = kit / f"{name}.json", kit / f"{name}.tar.xz"
    if not (manifest.is_file() and archive.is_file()):
        others = sorted(p.name for p in kit.glob("bg2vec-gpu-kit-*.tar.xz")) if kit.is_dir() else []
        raise SystemExit(
            f"[kit] no kit for Python {python_version} at {archive}"
            + (f" (found: {', '.join(others)})" if others else "")
            + f": build it where the package registry is reachable (.venv/bin/python bench/gpu_kit.py "
            f"--python-version {python_version}) and carry {kit.name}/ with the working tree")
    return manifest, archive


def script_with_python(data: bytes, python: str) -> bytes:
    """A kit script with its neutral ``#!python`` line pointed at ``python``; other scripts unchanged."""
    first, sep, rest = data.partition(b"\n")
    return f"#!{python}".encode() + sep + rest if first.rstrip() == b"#!python" else data


def make_venv(venv: Path) -> Path:
    """A new venv at ``venv`` (replacing one this script made) that sees this python's packages; returns
    its site-packages."""
    if venv.exists():
        if not (venv / MARKER).exists():
            raise SystemExit(f"[kit] {venv} exists and was not made by this script: remove it or pass --venv")
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    (venv / MARKER).touch()
    packages = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    # addsitedir, not a bare path: the device's own .pth files (editable installs, setuptools) apply too
    lines = [f"import site; site.addsitedir({d!r})" for d in site.getsitepackages() if Path(d).is_dir()]
    (packages / "bg2vec-gpu-device.pth").write_text("\n".join(lines) + "\n")
    return packages


def unpack(archive: Path, packages: Path, bin_dir: Path) -> list[str]:
    """The archive's packages into ``packages``, its scripts into ``bin_dir``; returns the scripts' names."""
    python = str(bin_dir / "python")
    scripts = []
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        in_bin = {m.name for m in members if m.name.split("/")[0] == "bin"}
        tar.extractall(packages, members=[m for m in members if m.name not in in_bin], filter="data")
        for member in members:
            if member.isfile() and member.name in in_bin:
                script = bin_dir / Path(member.name).name
                script.write_bytes(script_with_python(tar.extractfile(member).read(), python))
                script.chmod(0o755)
                scripts.append(script.name)
    return scripts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kit", type=Path, default=REPO / "gpu_kit", help="the folder bench/gpu_kit.py wrote")
    parser.add_argument("--venv", type=Path, default=Path("/tmp/bg2vec-gpu"), help="the venv to make")
    args = parser.parse_args()
    venv = args.venv.resolve()  # (the scripts' #! line needs an absolute path)
    manifest, archive = kit_files(args.kit, f"{sys.version_info.major}.{sys.version_info.minor}")
    carried = json.loads(manifest.read_text())["packages"]
    print(f"[kit] {archive.name} ({archive.stat().st_size / 2**20:.1f} MiB, {len(carried)} packages) -> venv "
          f"{venv} over {sys.executable}'s packages", flush=True)
    packages = make_venv(venv)
    bin_dir = venv / "bin"
    scripts = unpack(archive, packages, bin_dir)
    print(f"[kit] unpacked; commands: {' '.join(sorted(scripts))}", flush=True)
    python = str(bin_dir / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation",
                    "-e", str(REPO)], check=True)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run([python, "-c", REPORT], check=True, env=env)
    subprocess.run([str(bin_dir / "ray"), "--version"], check=True, env=env)
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True, env=env)
    findings = check.stdout.strip().splitlines()
    print("[kit] pip check: " + ("no broken requirements" if check.returncode == 0 else
                                 f"{len(findings)} findings:\n  " + "\n  ".join(findings)))
    print(f"[kit] ready: source {bin_dir}/activate")


if __name__ == "__main__":
    main()
