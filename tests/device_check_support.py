"""Step targets for the device check's process runner (imported by the spawned child by module name)."""

from __future__ import annotations

import os
import time


def sleeper(name, kwargs, result_path, log_path, cache_dir):
    time.sleep(60)


def crasher(name, kwargs, result_path, log_path, cache_dir):
    os._exit(3)
