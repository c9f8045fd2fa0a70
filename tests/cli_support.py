"""Run the installed console script ``spikereveal`` as a user does (a subprocess), optionally as if some optional
packages were not installed, and check the "no traceback" contract of bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPT = Path(sys.executable).parent / "spikereveal"  # the console script of this environment

# a sitecustomize that makes `import NAME` raise ModuleNotFoundError for each NAME in SPIKEREVEAL_TEST_BLOCK,
# as on a machine where the package is not installed (the README's first install has no torch and no onnx)
_BLOCKER = (
    "import os, sys\n"
    "for _name in os.environ.get('SPIKEREVEAL_TEST_BLOCK', '').split(','):\n"
    "    if _name:\n"
    "        sys.modules[_name] = None\n"
)


def run_cli(*argv, block: tuple[str, ...] = (), cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``spikereveal ARGV...`` in a subprocess; ``block``: optional packages to hide from it."""
    env = dict(os.environ)
    site = None
    if block:
        site = tempfile.mkdtemp(prefix="sr-site-")
        (Path(site) / "sitecustomize.py").write_text(_BLOCKER, encoding="utf-8")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (site, env.get("PYTHONPATH")) if p)
        env["SPIKEREVEAL_TEST_BLOCK"] = ",".join(block)
    try:
        return subprocess.run([str(SCRIPT), *map(str, argv)], capture_output=True, text=True, cwd=cwd, env=env,
                              timeout=timeout)
    finally:
        if site is not None:
            shutil.rmtree(site, ignore_errors=True)


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 2, one ``error:`` message on stderr containing every fragment, and no traceback anywhere."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == 2, (result.returncode, output)
    assert "error:" in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
    return result.stderr
