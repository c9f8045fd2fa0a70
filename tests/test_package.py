"""The package installs as one namespace and stays light to import."""

import json
import subprocess
import sys

import pytest


def _modules_after_import(module: str) -> set[str]:
    code = f"import sys, json, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(json.loads(out))


@pytest.mark.parametrize("module", ["spikereveal.kernels", "spikereveal.sim", "spikereveal.calibration"])
def test_pure_core_imports_no_heavy_dependencies(module):
    loaded = _modules_after_import(module)
    for heavy in ("torch", "zmq", "tensorrt", "onnxruntime"):
        assert heavy not in loaded, f"import {module} pulled in {heavy}"


def test_subpackages_live_in_one_namespace():
    import spikereveal
    import spikereveal.bench
    import spikereveal.calibration
    import spikereveal.engines
    import spikereveal.kernels
    import spikereveal.sim
    import spikereveal.stream
    import spikereveal.training

    assert spikereveal.kernels.__name__ == "spikereveal.kernels"
    assert spikereveal.__version__


def test_console_script_help_needs_no_torch():
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['tensorrt'] = None\n"
        "from spikereveal.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    sys.exit(e.code)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage: spikereveal" in result.stdout


def test_module_entry_point_prints_version():
    result = subprocess.run(
        [sys.executable, "-m", "spikereveal", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("spikereveal ")
