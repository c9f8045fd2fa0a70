"""A regular (non-editable) install maps every top-level folder into the spikereveal namespace."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tracked_files() -> list[str]:
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs a git checkout to know which files belong to the source tree")
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line and (REPO / line).is_file()]


def _build_backend_available() -> bool:
    """--no-build-isolation builds with this environment's setuptools: it needs a bdist_wheel command, from
    setuptools >= 70.1 or from wheel (pyproject's build requirements). torch pulls a recent setuptools; a
    venv without the train extra may hold neither."""
    for name in ("setuptools.command.bdist_wheel", "wheel.bdist_wheel"):
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except ModuleNotFoundError:  # the parent package is not installed
            pass
    return False


@pytest.mark.slow
@pytest.mark.skipif(not _build_backend_available(),
                    reason="needs pyproject's build requirements installed (setuptools >= 70.1, or wheel)")
def test_regular_install_has_every_subpackage(tmp_path):
    source = tmp_path / "src"
    for name in _tracked_files():
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(source)],
        check=True, capture_output=True, text=True,
    )
    code = (
        "import spikereveal, spikereveal.kernels, spikereveal.sim, spikereveal.stream, spikereveal.engines, "
        "spikereveal.training, spikereveal.calibration, spikereveal.bench, spikereveal.cli\n"
        "print(spikereveal.kernels.__file__)"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                            capture_output=True, text=True)
    assert Path(result.stdout.strip()).is_relative_to(site)
