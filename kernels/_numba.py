"""numba options for every kernel, in one place."""

from __future__ import annotations

import numba

# cache: compiled kernels survive between processes; nogil: stream stages may call kernels from threads.
KERNEL_OPTIONS = {"cache": True, "nogil": True, "boundscheck": False}

njit = numba.njit(**KERNEL_OPTIONS)
