"""Benchmark of the spike kernels against their plain numpy twins (``spikereveal bench kernels``).

Every kernel runs on the same seeded random packed frames (25 % spike density), once to compile (not
timed), then ``repeats`` times; the median wall time gives the headline rate and the speedup, the best run
is reported beside it. numba runs single-threaded. Rates are frames of spike data per second (for
``extract_window``: frames unpacked), except TFI (calls per second). The accumulation baseline is
``np.unpackbits`` + ``sum(dtype=uint16)`` over 256-frame chunks (faster than one unpackbits of everything).

``extract_window`` is the LDN input cut of every live exposure: K x 21 frames unpacked into the deployed
graph's uint8 input (0/255); ``extract_window_float32`` the training / PyTorch layout (0.0/1.0), four times
the bytes. Both write into a preallocated buffer, as serve does, and report the write floor (one
``out.fill`` of that buffer): float32 output is bound by memory writes, so numpy there is already within
``numpy_over_write_floor`` of the best any kernel can do.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Callable

import numpy as np

from spikereveal.errors import ConfigError
from spikereveal.kernels import (
    DEFAULT_K,
    LDN_SPIKE_WINDOW,
    SDM_SHORT_WINDOW,
    SpikeAccumulator,
    extract_ldn_input,
    packed_frame_bytes,
    tfi,
    window_count,
    window_counts,
)
from spikereveal.kernels.extract import SPIKE_LEVEL

ACCUMULATE_TARGET_FRAMES_PER_S = 400_000  # SPEC §8
ACCUMULATE_TARGET_SPEEDUP = 10.0
EXTRACT_TARGET_SPEEDUP = 3.0  # issue 15: the per-exposure LDN input cut (uint8, the deployed graph's input)
STREAM_BLOCK_FRAMES = 32  # a typical wire block (SPEC §7: 8-64 frames per message)
_BASELINE_CHUNK_FRAMES = 256  # the numpy twins unpack this many frames at a time to bound memory


def time_calls(function: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median, best) wall time of ``repeats`` calls after one untimed warm-up call (JIT compilation)."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), float(np.min(times))


def _numpy_window_count(packed: np.ndarray, start: int, stop: int) -> np.ndarray:
    """The numpy twin of window accumulation: unpackbits + sum, chunked to bound memory."""
    counts = np.zeros(packed.shape[1] * 8, dtype=np.uint16)
    for first in range(start, stop, _BASELINE_CHUNK_FRAMES):
        chunk = packed[first : min(first + _BASELINE_CHUNK_FRAMES, stop)]
        counts += np.unpackbits(chunk, axis=1, bitorder="little").sum(axis=0, dtype=np.uint16)
    return counts


def _numpy_tfi(packed: np.ndarray, center: int) -> np.ndarray:
    bits = np.unpackbits(packed, axis=1, bitorder="little").astype(bool)
    before = bits[: center + 1][::-1]
    after = bits[center + 1 :]
    previous = center - np.argmax(before, axis=0)
    following = center + 1 + np.argmax(after, axis=0)
    both = before.any(axis=0) & after.any(axis=0)
    image = np.zeros(bits.shape[1], dtype=np.float32)
    image[both] = 1.0 / (following[both] - previous[both])
    return image


def _entry(count: int, timed: tuple[float, float], baseline: tuple[float, float], unit: str = "frames") -> dict:
    """Rates from the medians (the headline numbers) plus the best runs, which a busy machine disturbs less."""
    (seconds, best), (baseline_seconds, baseline_best) = timed, baseline
    rate, baseline_rate = count / seconds, count / baseline_seconds
    return {
        f"{unit}_per_s": rate,
        f"baseline_{unit}_per_s": baseline_rate,
        "speedup": rate / baseline_rate,
        f"best_{unit}_per_s": count / best,
        f"best_baseline_{unit}_per_s": count / baseline_best,
        "seconds": seconds,
        "baseline_seconds": baseline_seconds,
        f"{unit}_per_call": count,
    }


def _extract_entry(packed, height, width, centers, rows, k, dtype, repeats) -> dict:
    """extract_ldn_input into a preallocated buffer against numpy's best twin (one ``unpackbits`` of the
    gathered rows, then one pass that scales/casts into the same buffer), plus the write floor: filling
    that buffer once (``out.fill``, best run), the least any extraction into it costs on this machine."""
    out = np.empty((k, LDN_SPIKE_WINDOW, height, width), dtype=dtype)
    twin = np.empty_like(out)

    def numpy_extract():
        bits = np.unpackbits(packed[rows], axis=1, bitorder="little").reshape(out.shape)
        if dtype == np.uint8:
            np.multiply(bits, SPIKE_LEVEL, out=twin)
        else:
            twin[...] = bits

    timed = time_calls(lambda: extract_ldn_input(packed, height, width, centers, out=out), repeats)
    baseline = time_calls(numpy_extract, repeats)
    floor = time_calls(lambda: out.fill(0), repeats)
    entry = _entry(rows.size, timed, baseline)
    entry["dtype"] = np.dtype(dtype).name
    entry["output_bytes_per_call"] = int(out.nbytes)
    entry["write_floor_frames_per_s"] = rows.size / floor[1]
    # best runs (least disturbed): 1 / this is about the most any kernel could gain on numpy here
    entry["numpy_over_write_floor"] = floor[1] / baseline[1]
    if dtype == np.uint8:
        entry["target_speedup"] = EXTRACT_TARGET_SPEEDUP
        entry["meets_target"] = bool(entry["speedup"] >= EXTRACT_TARGET_SPEEDUP)
    return entry


def machine_info() -> dict:
    import numba

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("model name", "Model")):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threads": numba.get_num_threads(),
    }


def run_kernel_bench(
    height: int = 250,
    width: int = 400,
    frames: int = 2048,
    repeats: int = 5,
    seed: int = 0,
    k: int = DEFAULT_K,
    exposure_frames: int = 300,
) -> dict:
    """Time each kernel against its numpy twin on ``frames`` random packed frames; returns a JSON-ready dict.

    Keys: ``accumulate`` (one window over all frames), ``accumulate_exposure`` (an exposure's long window
    plus ``k`` short 9-frame windows in one call), ``accumulate_stream`` (the same long window pushed in
    32-frame blocks), ``extract_window`` (``k`` x 21 frames unpacked to uint8 levels, the deployed input),
    ``extract_window_float32`` (the same to float32), ``tfi`` and ``machine``.
    """
    for name, value in (("frames", frames), ("repeats", repeats), ("k", k), ("exposure_frames", exposure_frames)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    margin = LDN_SPIKE_WINDOW // 2
    if frames < LDN_SPIKE_WINDOW:
        raise ConfigError(f"the kernel bench needs at least {LDN_SPIKE_WINDOW} frames (one LDN window), got {frames}")
    import numba

    threads_before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        rng = np.random.default_rng(seed)
        shape = (frames, packed_frame_bytes(height, width))
        packed = rng.integers(0, 256, shape, dtype=np.uint8) & rng.integers(0, 256, shape, dtype=np.uint8)
        result = {"geometry": {"height": height, "width": width, "frames": frames, "repeats": repeats}}

        timed = time_calls(lambda: window_count(packed, height, width, 0, frames), repeats)
        accumulate_baseline = time_calls(lambda: _numpy_window_count(packed, 0, frames), repeats)
        entry = _entry(frames, timed, accumulate_baseline)
        entry["target_frames_per_s"] = ACCUMULATE_TARGET_FRAMES_PER_S
        entry["target_speedup"] = ACCUMULATE_TARGET_SPEEDUP
        entry["meets_target"] = bool(
            entry["frames_per_s"] >= ACCUMULATE_TARGET_FRAMES_PER_S and entry["speedup"] >= ACCUMULATE_TARGET_SPEEDUP
        )
        result["accumulate"] = entry

        # one exposure: the long window and k short windows centred on evenly spaced frames inside it
        exposure = min(exposure_frames, frames - 2 * margin)
        centers = margin + np.linspace(0, exposure - 1, k).round().astype(np.int64)
        half = SDM_SHORT_WINDOW // 2
        centers = np.clip(centers, half, frames - half - 1)
        starts = np.concatenate([[margin], centers - half])
        stops = np.concatenate([[margin + exposure], centers + half + 1])

        def numpy_exposure():
            bits = np.unpackbits(packed[margin : margin + exposure], axis=1, bitorder="little")
            counts = [bits.sum(axis=0, dtype=np.uint16)]
            counts += [np.unpackbits(packed[a:b], axis=1, bitorder="little").sum(0, dtype=np.uint16)
                       for a, b in zip(starts[1:], stops[1:])]
            return counts

        timed = time_calls(lambda: window_counts(packed, height, width, starts, stops), repeats)
        baseline = time_calls(numpy_exposure, repeats)
        entry = _entry(exposure, timed, baseline)
        entry["windows"] = int(starts.size)
        result["accumulate_exposure"] = entry

        def stream():
            accumulator = SpikeAccumulator(height, width, [0], [frames])
            for first in range(0, frames, STREAM_BLOCK_FRAMES):
                accumulator.push(first, packed[first : first + STREAM_BLOCK_FRAMES])
            return accumulator.counts()

        timed = time_calls(stream, repeats)
        entry = _entry(frames, timed, accumulate_baseline)
        entry["block_frames"] = STREAM_BLOCK_FRAMES
        result["accumulate_stream"] = entry

        ldn_centers = np.linspace(margin, frames - margin - 1, k).round().astype(np.int64)
        rows = (ldn_centers[:, None] - margin + np.arange(LDN_SPIKE_WINDOW)).ravel()
        for name, dtype in (("extract_window", np.uint8), ("extract_window_float32", np.float32)):
            result[name] = _extract_entry(packed, height, width, ldn_centers, rows, k, dtype, repeats)

        tfi_frames = min(frames, 2 * LDN_SPIKE_WINDOW + 1)  # TFI looks at a short neighbourhood
        tfi_packed = packed[:tfi_frames]
        center = tfi_frames // 2
        timed = time_calls(lambda: tfi(tfi_packed, height, width, center), repeats)
        baseline = time_calls(lambda: _numpy_tfi(tfi_packed, center), repeats)
        result["tfi"] = _entry(1, timed, baseline, unit="calls")
        result["machine"] = machine_info()
    finally:
        numba.set_num_threads(threads_before)
    return result


def format_table(result: dict) -> str:
    """A short text table of a :func:`run_kernel_bench` result."""
    lines = [f"{'kernel':<22}{'median':>13}{'best':>13}{'numpy':>13}{'speedup':>9}  unit"]
    for name, entry in result.items():
        if not isinstance(entry, dict) or "speedup" not in entry:
            continue
        unit = "frames" if "frames_per_s" in entry else "calls"
        lines.append(
            f"{name:<22}{entry[f'{unit}_per_s']:>13,.0f}{entry[f'best_{unit}_per_s']:>13,.0f}"
            f"{entry[f'baseline_{unit}_per_s']:>13,.0f}{entry['speedup']:>8.1f}x  {unit}/s"
        )
    acc = result.get("accumulate")
    if acc:
        verdict = "met" if acc["meets_target"] else "NOT met"
        lines.append(
            f"accumulate target (>= {acc['target_frames_per_s']:,} frames/s and >= {acc['target_speedup']:.0f}x "
            f"numpy): {verdict}"
        )
    extract = result.get("extract_window")
    if extract and "meets_target" in extract:
        verdict = "met" if extract["meets_target"] else "NOT met"
        lines.append(f"extract_window target (>= {extract['target_speedup']:.0f}x numpy, uint8 input): {verdict}")
    for name in ("extract_window", "extract_window_float32"):
        entry = result.get(name)
        if entry and "write_floor_frames_per_s" in entry:
            lines.append(f"{name} ({entry['dtype']}): write floor (out.fill, best) {entry['write_floor_frames_per_s']:,.0f} "
                         f"frames/s; numpy's best run is {entry['numpy_over_write_floor']:.2f} of it: about "
                         f"{1 / entry['numpy_over_write_floor']:.1f}x numpy at most")
    machine = result.get("machine", {})
    lines.append(
        f"machine: {machine.get('cpu')}, {machine.get('cores')} cores, python {machine.get('python')}, "
        f"numpy {machine.get('numpy')}, numba {machine.get('numba')} ({machine.get('numba_threads')} thread)"
    )
    return "\n".join(lines)
