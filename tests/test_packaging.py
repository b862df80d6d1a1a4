"""``pip install .`` gives the ``histocompare`` command, whose only top-level import name is ``histocompare``.

Cheap on purpose: the wheel is built from a copy of the checkout without build isolation (no download), and it is
installed without dependencies into a fresh venv that borrows this venv's packages through a ``.pth`` file. The full
acceptance (a clean clone, a new venv, every dependency installed) is in the closing note of issue 24.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from conftest import PROJECT_ROOT

SHIPPED = ("pipeline", "dashboard", "pages")


def _product_files() -> list[Path]:
    return sorted(p.relative_to(PROJECT_ROOT) for tree in SHIPPED for p in (PROJECT_ROOT / tree).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".toml", ".csv"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the checkout (a build writes build/ and *.egg-info next to its sources)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        shutil.copy(PROJECT_ROOT / name, src / name)
    for tree in (*SHIPPED, "histocompare"):
        shutil.copytree(PROJECT_ROOT / tree, src / tree, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (found,) = out.glob("histocompare-*.whl")
    return found


def test_the_wheel_ships_the_three_trees_under_one_top_level_name(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"histocompare", wheel.name.split("-py3")[0] + ".dist-info"}
    shipped = {n.removeprefix("histocompare/_app/") for n in names if n.startswith("histocompare/_app/")}
    missing = [str(p) for p in _product_files() if p.as_posix() not in shipped]
    assert not missing, f"not in the wheel: {missing}"
    assert "pipeline/configs/demo.toml" in shipped and "dashboard/.streamlit/config.toml" in shipped
    assert not any(n.startswith(("tools/", "tests/", "histocompare/_app/tools", "histocompare/_app/tests")) for n in names)
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "histocompare = histocompare.cli:main" in entry
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    pins = [line.strip() for line in (PROJECT_ROOT / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert all(f"Requires-Dist: {pin.split('#')[0].strip()}" in metadata for pin in pins)  # the tested set, pin for pin


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (no dependencies: they come from this venv through a .pth file).
    ``--ignore-installed``: `make install` puts the checkout into this venv as an editable package, which pip would
    otherwise see through the borrowed path and take as already installed (and install nothing)."""
    env = tmp_path_factory.mktemp("env") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    site = Path(subprocess.run([str(env / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install", "--no-deps",
                           "--ignore-installed", "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return env


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HISTOCOMPARE_HOME", "HISTOCOMPARE_ARTIFACTS")}
    return {**env, "HISTOCOMPARE_QUIET": "1", **extra}


def test_only_histocompare_is_importable_after_install(installed, tmp_path):
    code = "import importlib.util as u; print([n for n in ('histocompare', 'pipeline', 'dashboard', 'pages') if u.find_spec(n)])"
    out = subprocess.run([str(installed / "bin" / "python"), "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env=_clean_env(), timeout=60)
    assert out.stdout.strip() == "['histocompare']", out.stderr


def test_the_command_runs_from_another_directory(installed, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    command = str(installed / "bin" / "histocompare")
    helped = subprocess.run([command, "--help"], capture_output=True, text=True, cwd=work, env=_clean_env(), timeout=120)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: histocompare") and "histocompare dashboard" in helped.stdout
    assert "run" in helped.stdout and "train" in helped.stdout
    ran = subprocess.run([command, "run", "--config", "pipeline/configs/demo.toml", "--only", "index", "split",
                          "--set", "experiment.demo_patients=8", "--set", "experiment.demo_images_per_patient=2"],
                         capture_output=True, text=True, cwd=work, env=_clean_env(), timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    split = pd.read_parquet(work / "artifacts" / "demo" / "split.parquet")  # written here, not in site-packages
    assert len(split) == 8 * 2 and (work / "data" / "demo").is_dir()
    assert not any((p / "artifacts").exists() for p in installed.rglob("_app"))
    bad = subprocess.run([command, "run", "--config", "no_such_preset"], capture_output=True, text=True, cwd=work,
                         env=_clean_env(), timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: config file no_such_preset does not exist (presets: demo,")
