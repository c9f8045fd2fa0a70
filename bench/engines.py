"""``spikereveal bench engines``: time every available runner on the same exposure windows.

Per geometry (simulator presets: ``gopro`` 1280x720, ``rsb`` 1600x1000) and runner, one exposure window
of K frames (default 7) is one timed ``infer`` call on identical random inputs (blurry frame in [0,1],
binary spikes at ~20 % density; the network's cost does not depend on the values). Warm-up calls are
excluded. Reported per window: median and p99 (nearest rank) in ms, and output frames per second
(K / mean window time). Runner keys are the backend name, suffixed with the precision when not fp32
(``ort-int8``). Runners with a GPU split (TensorRT) add, from CUDA events, the host->device copies, the
compute and the device->host copy per window (``h2d_ms_p50`` ...; the window time includes the copies),
the rate with two windows in flight (``overlapped_*``) and the equivalent ``trtexec`` line for a
cross-check. Weights: a checkpoint if given, else a seeded random LDN (timing only); several models (checkpoints
or shipped names, ``--model default lite``) are timed side by side. Each entry carries the model's multiply-adds
per output frame and parameters, counted from its ONNX graph (``bench.graph_cost``). int8 exports made
here are calibrated on the same random windows: their timings are real, their quality is not.
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from spikereveal import __version__
from spikereveal.engines.cache import check_precision_name
from spikereveal.engines.runners import InputShape, RunnerOptions, create_runner, runner_unavailable_reason
from spikereveal.errors import ConfigError
from spikereveal.kernels.extract import SPIKE_LEVEL
from spikereveal.kernels.timing import DEFAULT_K
from spikereveal.stream.stats import nearest_rank_percentile

logger = logging.getLogger(__name__)

BENCH_GEOMETRIES = ("gopro", "rsb")
DEFAULT_RUNNERS = ("ort", "torch", "trt")
SPIKE_DENSITY = 0.2

Progress = Callable[[str], None]  # called with a short status line before each timed series


def geometry_shape(geometry: str | tuple[int, int], k: int = DEFAULT_K) -> InputShape:
    """The network grid of a simulator preset (``"gopro"``, ``"rsb"``) or an ``(height, width)`` pair (the CLI
    parses ``HxW`` text with ``commands._types.parse_int_pair``), K frames."""
    if isinstance(geometry, tuple):
        height, width = geometry
        return InputShape(k, int(height), int(width))
    from spikereveal.sim.config import preset

    config = preset(geometry)
    return InputShape(k, config.canonical_height, config.canonical_width)


def summarise_window_times(times_s: Sequence[float], k: int) -> dict:
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    return {
        "window_ms_p50": float(np.median(ms)),
        "window_ms_p99": nearest_rank_percentile(ms, 99),
        "window_ms_mean": float(ms.mean()),
        "frames_per_s": float(k / (ms.mean() / 1e3)),
        "repeats": int(ms.size),
    }


def random_window(shape: InputShape, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random exposure in the deployed graph's formats: ``image`` uint8 and spike levels."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=shape.image, dtype=np.uint8)
    spikes = (rng.random(shape.spikes, dtype=np.float32) < SPIKE_DENSITY).astype(np.uint8) * np.uint8(SPIKE_LEVEL)
    return image, spikes


def time_runner(runner, image: np.ndarray, spikes: np.ndarray, repeats: int, warmup: int,
                gpu_ms: list | None = None) -> list[float]:
    """Seconds per ``infer`` call, after ``warmup`` untimed calls.

    ``gpu_ms``: when given, the runner's per-call GPU split (``last_timings_ms`` of the TensorRT runner:
    host->device copies, compute, device->host copy, from CUDA events) is appended to it per timed call.
    """
    for _ in range(warmup):
        runner.infer(image, spikes)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        runner.infer(image, spikes)
        times.append(time.perf_counter() - started)
        if gpu_ms is not None and getattr(runner, "last_timings_ms", None):
            gpu_ms.append(dict(runner.last_timings_ms))
    return times


GPU_PARTS = ("h2d", "compute", "d2h", "gpu_total")


def summarise_gpu_times(samples: Sequence[dict]) -> dict:
    """Median and nearest-rank p99 of each GPU part (``h2d_ms_p50`` ...); parts never measured are left out."""
    summary = {}
    for part in GPU_PARTS:
        values = [sample[part] for sample in samples if sample.get(part) is not None]
        if values:
            summary[f"{part}_ms_p50"] = float(np.median(values))
            summary[f"{part}_ms_p99"] = nearest_rank_percentile(values, 99)
    return summary


def time_overlapped(runner, image: np.ndarray, spikes: np.ndarray, repeats: int) -> dict:
    """Windows back to back through ``submit``/``wait`` with two in flight (the copy of window n+1 overlaps
    the compute of window n): mean ms per window and output frames/s over the whole run."""
    tickets = []
    started = time.perf_counter()
    for _ in range(repeats):
        if len(tickets) == 2:
            runner.wait(tickets.pop(0))
        tickets.append(runner.submit(image, spikes))
    for ticket in tickets:
        runner.wait(ticket)
    mean_ms = (time.perf_counter() - started) * 1e3 / repeats
    return {"overlapped_window_ms_mean": mean_ms, "overlapped_frames_per_s": runner.shape.k / (mean_ms / 1e3)}


def _gpu_block(runner, samples: Sequence[dict], image, spikes, repeats: int) -> dict:
    """What a runner with a GPU split adds to its entry: the split, the overlapped rate, the trtexec line."""
    if not samples:
        return {}
    block = summarise_gpu_times(samples)
    block["transfers_included"] = True  # window_ms is host wall time around infer(): copies included
    if hasattr(runner, "submit"):
        block.update(time_overlapped(runner, image, spikes, repeats))
    if hasattr(runner, "trtexec_command"):
        block["trtexec"] = runner.trtexec_command()
    return block


def environment(threads: int) -> dict:
    info = {
        "spikereveal": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "numpy": np.__version__,
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    for module in ("onnxruntime", "torch", "tensorrt"):
        try:
            info[module] = __import__(module).__version__
        except Exception:
            info[module] = None
    return info


RANDOM_MODEL = "random"


def _load_model(model_path):
    if model_path is not None:
        from spikereveal.engines.checkpoint import load_checkpoint
        from spikereveal.engines.export import resolve_model_path

        return load_checkpoint(resolve_model_path(model_path), expected_kind="ldn")[0]
    import torch

    from spikereveal.engines.ldn import LDN

    torch.manual_seed(0)
    return LDN().eval()


def model_label(model_path) -> str:
    """How a model is named in the report: a shipped model's name, a checkpoint's file stem, or ``random``."""
    if model_path is None:
        return RANDOM_MODEL
    from spikereveal.engines.export import SHIPPED_MODELS

    text = os.fspath(model_path)
    return text if text in SHIPPED_MODELS and not Path(text).is_file() else Path(text).stem


def count_model_cost(model, shape: InputShape, directory: Path) -> dict:
    """The network's multiply-adds per output frame and parameters, counted from the ONNX graph of its deployed
    form at ``shape`` (static, fp32, transposed convolutions as they are: the network's own cost;
    ``bench.graph_cost``)."""
    from spikereveal.bench.graph_cost import count_graph_cost
    from spikereveal.engines.export import ExportConfig, export_ldn

    path = directory / f"count_{shape.k}x{shape.height}x{shape.width}.onnx"
    export_ldn(model, path, ExportConfig(k=shape.k, height=shape.height, width=shape.width, subpixel_decoder=False))
    cost = count_graph_cost(path)
    return {"macs_per_frame": cost.per_frame(shape.k), "params": cost.params,
            "macs_by_op_per_frame": {op: macs / shape.k for op, macs in cost.macs_by_op.items()}}


def bench_engines(runners: Sequence[str] = DEFAULT_RUNNERS, geometries: Sequence = BENCH_GEOMETRIES,
                  repeats: int = 10, warmup: int = 2, k: int = DEFAULT_K, threads: int | None = None,
                  precisions: Sequence[str] = ("fp32",), model_path=None, work_dir=None,
                  progress: Progress | None = None, interleave: bool = True, models: Sequence = ()) -> dict:
    """Time each available runner x precision on each geometry; unavailable runners are listed, not run.

    ``models``: several LDN checkpoints or shipped model names ("default", "lite") timed side by side (runner
    keys become ``<model>/<runner>``); else ``model_path`` (one, keys are the runner names), else a seeded random
    LDN. Every entry also says ``model``, ``macs_per_frame`` and ``params``, counted from the network's ONNX graph
    at that geometry (:func:`count_model_cost`; the blurry frame's encoder counts once per exposure, as it runs).
    ``interleave`` (default): all runners of a geometry are loaded together and timed round-robin, one
    window each per round, so that load from other processes hits them alike and their ratio stays fair on
    a shared machine (costs the memory of all runners at once; False: one runner after the other).
    Returns ``{"<geometry>": {"<runner>": {"window_ms_p50", "window_ms_p99", "frames_per_s", "macs_per_frame",
    "params", ...}}, "environment": {..., "models": {...}, "skipped_runners": {"<runner>": reason}}}``.
    """
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for precision in precisions:
        check_precision_name(precision)
    model_paths = list(models) if models else [model_path]
    labels = [model_label(path) for path in model_paths]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"two --model values have the same name in the report ({labels}); rename one file")
    prefixed = len(model_paths) > 1
    options = RunnerOptions(threads=threads, warmup_runs=0)
    skipped = {}
    plan = []
    for name in runners:
        reason = runner_unavailable_reason(name)
        if reason is not None:
            skipped[name] = reason
            continue
        for precision in precisions:
            if name == "torch" and precision != "fp32":
                continue  # the eager reference is fp32 only
            plan.append((name, precision))
    load_average = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results: dict = {}
    loaded_models = {label: _load_model(path) for label, path in zip(labels, model_paths)} if plan else {}
    model_info: dict = {label: {"model": "random seeded LDN (timing only)" if path is None else str(path)}
                        for label, path in zip(labels, model_paths)}
    with tempfile.TemporaryDirectory(prefix="spikereveal-bench-", dir=work_dir) as tmp:
        for requested in geometries:
            shape = geometry_shape(requested, k)
            geometry = requested if isinstance(requested, str) else f"{shape.height}x{shape.width}"  # the report's key
            image, spikes = random_window(shape)
            exports: dict[tuple[str, str], Path] = {}
            costs: dict[str, dict] = {}

            def make(label: str, name: str, precision: str):
                model = loaded_models[label]
                if name == "torch":
                    return create_runner("torch", shape, model=model, options=options)
                if (label, precision) not in exports:
                    folder = Path(tmp) / f"model{labels.index(label)}"
                    folder.mkdir(exist_ok=True)
                    exports[label, precision] = _export(model, shape, precision, folder, image, spikes)
                return create_runner(name, shape, onnx_path=exports[label, precision], precision=precision,
                                     options=options)

            entries = [(label, name, precision) for label in labels for name, precision in plan]
            keys = [(f"{label}/" if prefixed else "") + (name if precision == "fp32" else f"{name}-{precision}")
                    for label, name, precision in entries]
            for label in labels if plan else ():
                folder = Path(tmp) / f"count{labels.index(label)}"
                folder.mkdir(exist_ok=True)
                costs[label] = count_model_cost(loaded_models[label], shape, folder)
                model_info[label].setdefault("geometries", {})[geometry] = costs[label]
                model_info[label]["variant"] = getattr(getattr(loaded_models[label], "config", None), "variant", None)
            times: dict[str, list[float]] = {key: [] for key in keys}
            gpu: dict[str, list[dict]] = {key: [] for key in keys}
            extra: dict[str, dict] = {key: {} for key in keys}
            if interleave:
                loaded = []
                try:
                    for key, entry in zip(keys, entries):
                        if progress is not None:
                            progress(f"{geometry} {key}")
                        runner = make(*entry).load()
                        loaded.append((key, runner))
                        time_runner(runner, image, spikes, 0, warmup)
                    for _ in range(repeats):
                        for key, runner in loaded:
                            times[key] += time_runner(runner, image, spikes, 1, 0, gpu[key])
                    for key, runner in loaded:
                        extra[key] = _gpu_block(runner, gpu[key], image, spikes, repeats)
                finally:
                    for _, runner in loaded:
                        runner.close()
            else:
                for key, entry in zip(keys, entries):
                    if progress is not None:
                        progress(f"{geometry} {key}")
                    with make(*entry) as runner:
                        times[key] = time_runner(runner, image, spikes, repeats, warmup, gpu[key])
                        extra[key] = _gpu_block(runner, gpu[key], image, spikes, repeats)
            results[geometry] = {
                key: {**summarise_window_times(times[key], k), "model": label,
                      "macs_per_frame": costs[label]["macs_per_frame"], "params": costs[label]["params"], **extra[key]}
                for key, (label, _, _) in zip(keys, entries)}
            logger.info("%s: %s", geometry, results[geometry])
    results["environment"] = environment(options.resolved_threads())
    results["environment"].update(skipped_runners=skipped, k=k, repeats=repeats, warmup=warmup,
                                  interleaved=interleave, load_average_1m_at_start=load_average,
                                  model=", ".join(info["model"] for info in model_info.values()),
                                  models=model_info, transfers_included=True,
                                  macs_counted="from the ONNX graph of each model at each geometry: Conv, "
                                               "ConvTranspose, MatMul, Gemm (bench.graph_cost), per output frame")
    return results


def _export(model, shape: InputShape, precision: str, directory: Path, image, spikes) -> Path:
    from spikereveal.engines.export import ExportConfig, export_ldn

    config = ExportConfig(precision=precision, k=shape.k, height=shape.height, width=shape.width,
                          calibration_windows=2)
    calibration = [(image, spikes)] * 2 if precision == "int8" else None
    path = directory / f"ldn_{precision}_{shape.k}x{shape.height}x{shape.width}.onnx"
    return export_ldn(model, path, config, calibration=calibration)


def ratio(results: dict, geometry: str, faster: str, slower: str) -> float | None:
    """How many times faster ``faster`` is than ``slower`` per window (median), or None if either is absent."""
    table = results.get(geometry, {})
    if faster not in table or slower not in table:
        return None
    return table[slower]["window_ms_p50"] / table[faster]["window_ms_p50"]


def model_comparisons(results: dict) -> list[str]:
    """Lines comparing every model with the first one, per geometry and runner: window time and MACs ratios."""
    lines = []
    models = list((results.get("environment") or {}).get("models") or {})
    if len(models) < 2:
        return lines
    base = models[0]
    for geometry, table in results.items():
        if geometry == "environment":
            continue
        for key, entry in table.items():
            if entry.get("model") == base:
                continue
            runner = key.split("/", 1)[-1]
            reference = table.get(f"{base}/{runner}")
            if reference is None:
                continue
            lines.append(f"{geometry:<10} {key}: {reference['window_ms_p50'] / entry['window_ms_p50']:.2f}x faster per "
                         f"window (median) than {base}/{runner}, "
                         f"{reference['macs_per_frame'] / entry['macs_per_frame']:.2f}x fewer MACs per frame")
    return lines


def format_table(results: dict) -> str:
    """A short text table: one line per geometry x runner, then ORT/torch speed-ups and skipped runners."""
    width = max([10] + [len(key) for geometry, table in results.items() if geometry != "environment" for key in table])
    lines = [f"{'geometry':<10} {'runner':<{width}} {'p50 ms':>10} {'p99 ms':>10} {'frames/s':>9} {'GMAC/frame':>10} "
             f"{'params':>8}"]
    for geometry, table in results.items():
        if geometry == "environment":
            continue
        for name, entry in table.items():
            macs = entry.get("macs_per_frame")
            params = entry.get("params")
            lines.append(f"{geometry:<10} {name:<{width}} {entry['window_ms_p50']:>10.1f} {entry['window_ms_p99']:>10.1f} "
                         f"{entry['frames_per_s']:>9.2f} {'' if macs is None else f'{macs / 1e9:.3f}':>10} "
                         f"{'' if params is None else params:>8}")
            if "compute_ms_p50" in entry:
                lines.append(f"{'':<10} {name:<10} GPU p50: h2d {entry['h2d_ms_p50']:.2f} ms, compute "
                             f"{entry['compute_ms_p50']:.2f} ms, d2h {entry['d2h_ms_p50']:.2f} ms (window times "
                             "include the copies)")
            if "overlapped_window_ms_mean" in entry:
                lines.append(f"{'':<10} {name:<10} two windows in flight (copy overlaps compute): "
                             f"{entry['overlapped_window_ms_mean']:.1f} ms/window, "
                             f"{entry['overlapped_frames_per_s']:.2f} frames/s")
            if "trtexec" in entry:
                lines.append(f"{'':<10} {name:<10} cross-check: {entry['trtexec']}")
        speedup = ratio(results, geometry, "ort", "torch")
        if speedup is not None:
            lines.append(f"{geometry:<10} ort is {speedup:.2f}x faster than torch per window (median)")
    lines += model_comparisons(results)
    env = results.get("environment", {})
    for name, reason in env.get("skipped_runners", {}).items():
        lines.append(f"skipped {name}: {reason}")
    lines.append(f"K={env.get('k')}, {env.get('threads')} threads, {env.get('repeats')} repeats after "
                 f"{env.get('warmup')} warm-up, {env.get('cpu_count')} CPUs; MACs counted from each model's ONNX graph")
    return "\n".join(lines)
