"""``spikereveal bench device-check --out DIR``: the one-shot check of the TensorRT path on a GPU or Jetson.

Where TensorRT or a CUDA device is missing it returns at once with the reason (the CLI exits 0). Otherwise,
with the shipped student, at the ``gopro`` and ``rsb`` geometries (K = 7):

1. ``environment``: versions (TensorRT, cuda-bindings, driver), the GPU and compute capability, Jetson power mode.
2. ``simulate``: a short simulated recording per geometry (with ground truth).
3. ``export``: fp32, fp16 and int8 ONNX exports (int8 calibrated on that recording).
4. ``build``: one TensorRT engine per export (cached in ``DIR/engine_cache``), its real precision checked.
5. ``deblur``: ``deblur --engine ort`` (fp32, the CPU reference) and ``--engine trt`` at each precision on the
   recording, all from the same exports. Criteria: the fp32 TensorRT frames agree with ONNX Runtime's to
   >= 45 dB PSNR (frame against frame); fp16/int8 lose <= 0.3 dB of PSNR against the ground truth relative
   to the fp32 reference (ONNX Runtime fp32's PSNR against the same ground-truth frames); their PSNR
   against the ONNX Runtime fp32 frames is reported too (not a criterion: reduced precision differs).
6. ``bench_engines``: ``bench engines`` timing of each engine (window time with copies, GPU split from CUDA
   events, two windows in flight, the equivalent ``trtexec`` line).
7. ``bench_pipeline``: ``bench pipeline --engine trt`` on the rsb recording (replay -> serve -> report).

Each step runs in its own (spawned) process with its own time budget, within a total of
:data:`TOTAL_BUDGET_S`: a step that fails, crashes or overruns is recorded as such and the others still
run (a step that needs an earlier one's output says so). ``DIR/device_check.json`` and
``DIR/device_check.md`` are the report; ``DIR/steps/<step>.log`` holds each step's log and traceback.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)

GEOMETRIES = ("gopro", "rsb")
PRECISIONS = ("fp32", "fp16", "int8")
K = 7
FP32_AGREEMENT_DB = 45.0  # TensorRT fp32 frames vs ONNX Runtime fp32 frames
PRECISION_LOSS_DB = 0.3  # fp16/int8 PSNR-vs-ground-truth loss against the fp32 reference (SPEC §8)
TOTAL_BUDGET_S = 450.0  # the whole check, under 8 minutes on one GPU
STEP_BUDGETS_S = {"environment": 30.0, "simulate": 90.0, "export": 120.0, "build": 180.0, "deblur": 120.0,
                  "bench_engines": 60.0, "bench_pipeline": 90.0}
REPORT_JSON = "device_check.json"
REPORT_MD = "device_check.md"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class DeviceCheckConfig:
    out_dir: str
    model: str | None = None  # LDN checkpoint; None: the shipped student
    exposures: int = 6  # per simulated recording
    geometries: tuple[str, ...] = GEOMETRIES
    precisions: tuple[str, ...] = PRECISIONS
    bench_repeats: int = 20
    total_budget_s: float = TOTAL_BUDGET_S
    step_budgets_s: dict = field(default_factory=lambda: dict(STEP_BUDGETS_S))
    seed: int = 0


def unavailable_reason() -> str | None:
    """None when TensorRT and a CUDA device are usable here, else why not (checked in this process)."""
    from spikereveal.engines.runners import runner_unavailable_reason

    return runner_unavailable_reason("trt")


# -- the steps (each runs in a child process; arguments and results are JSON-able) -------------------------
def step_environment(out_dir: str) -> dict:
    from spikereveal.environment import collect_environment
    from spikereveal.engines.trt import _CudaRuntime, _import_tensorrt, cuda_bindings_version

    trt = _import_tensorrt()
    cuda = _CudaRuntime()
    index = cuda.select(None)
    name, capability = cuda.device_identity(index)
    return collect_environment(engine="trt", transfers_included=True, extra={
        "tensorrt": trt.__version__, "cuda_bindings": cuda_bindings_version(), "cuda_module": cuda.module,
        "gpu_name": name, "compute_capability": list(capability), "device_count": cuda.device_count()})


def step_simulate(out_dir: str, geometries, exposures: int, seed: int) -> dict:
    from spikereveal.sim import preset, simulate_recording

    return {geometry: str(simulate_recording(preset(geometry, k=K), Path(out_dir) / "recordings" / geometry,
                                             seed=seed, exposures=exposures, overwrite=True))
            for geometry in geometries}


def _each(items, work) -> dict:
    """``work(item)`` per item; a failure is recorded for that item and the rest still run."""
    results = {}
    for key, item in items:
        started = time.perf_counter()
        try:
            results[key] = {"ok": True, **work(item)}
        except Exception as exc:  # recorded per item; the report shows it
            logger.error("%s failed: %s\n%s", key, exc, traceback.format_exc())
            results[key] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        results[key]["seconds"] = time.perf_counter() - started
    return results


def _shape(geometry: str):
    from spikereveal.bench.engines import geometry_shape

    return geometry_shape(geometry, K)


def step_export(out_dir: str, recordings: dict, precisions, model) -> dict:
    from spikereveal.engines.export import ExportConfig, export_checkpoint

    def export(item):
        geometry, precision = item
        shape = _shape(geometry)
        config = ExportConfig(precision=precision, k=shape.k, height=shape.height, width=shape.width)
        path = Path(out_dir) / "onnx" / f"ldn_{geometry}_{precision}.onnx"
        calib = [recordings[geometry]] if precision == "int8" else []
        return {"path": str(export_checkpoint(model, path, config, calib_recordings=calib))}

    items = [(f"{g}/{p}", (g, p)) for g in recordings for p in precisions]
    return _each(items, export)


def step_build(out_dir: str, exports: dict) -> dict:
    from spikereveal.engines.runners import RunnerOptions
    from spikereveal.engines.trt import build_engine

    def build(item):
        key, path = item
        geometry, precision = key.split("/")
        plan = Path(out_dir) / "engines" / f"ldn_{geometry}_{precision}.plan"
        info = build_engine(path, plan, _shape(geometry), precision, RunnerOptions())
        return {"plan": str(plan), "built": info["built"], "tensor_types": info["tensor_types"],
                "key": info["key"], "precision_verified": True}

    return _each([(key, (key, entry["path"])) for key, entry in exports.items() if entry.get("ok")], build)


def _frames(directory: Path) -> dict:
    import csv

    with open(directory / "frames.csv", newline="", encoding="utf-8") as stream:
        return {(int(row["exposure_index"]), int(row["t_ns"])): directory / row["image"]
                for row in csv.DictReader(stream)}


def _ground_truth(recording: Path) -> dict:
    import csv

    with open(recording / "gt.csv", newline="", encoding="utf-8") as stream:
        return {(int(row["exposure_index"]), int(row["t_ns"])): recording / row["image"]
                for row in csv.DictReader(stream)}


def _read(path):
    import cv2
    import numpy as np

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read {path}")
    return image.astype(np.float32) / 255.0


def _nearest_truth(truth: dict, key: tuple[int, int]):
    """The ground-truth frame of the same exposure nearest in time (the output and gt grids coincide in
    simulation; nearest guards against a nanosecond of rounding)."""
    same = [k for k in truth if k[0] == key[0]]
    return truth[min(same, key=lambda k: abs(k[1] - key[1]))] if same else None


def compare_outputs(reference_dir: Path, other_dir: Path, recording: Path | None) -> dict:
    """Mean PSNR of ``other`` frames against ``reference`` frames and, with ``recording``, of both against
    the ground truth (same frames): ``{"vs_reference_db", "reference_vs_gt_db", "vs_gt_db", "frames"}``."""
    import numpy as np

    from spikereveal.kernels.metrics import psnr

    reference, other = _frames(Path(reference_dir)), _frames(Path(other_dir))
    common = sorted(set(reference) & set(other))
    if not common:
        raise ValueError(f"{reference_dir} and {other_dir} have no frame in common")
    truth = _ground_truth(Path(recording)) if recording is not None else {}
    agree, ref_gt, other_gt = [], [], []
    for key in common:
        a, b = _read(reference[key]), _read(other[key])
        agree.append(psnr(a, b))
        gt_path = _nearest_truth(truth, key) if truth else None
        if gt_path is not None:
            gt = _read(gt_path)
            ref_gt.append(psnr(gt, a))
            other_gt.append(psnr(gt, b))
    return {"frames": len(common), "vs_reference_db": float(np.mean(agree)),
            "reference_vs_gt_db": float(np.mean(ref_gt)) if ref_gt else None,
            "vs_gt_db": float(np.mean(other_gt)) if other_gt else None}


def judge(precision: str, comparison: dict) -> dict:
    """The criterion of one TensorRT precision against the ONNX Runtime fp32 reference."""
    if precision == "fp32":
        value = comparison["vs_reference_db"]
        return {"criterion": f"TensorRT fp32 frames vs ONNX Runtime fp32 frames >= {FP32_AGREEMENT_DB} dB",
                "value_db": value, "passed": bool(value >= FP32_AGREEMENT_DB)}
    if comparison.get("vs_gt_db") is None or comparison.get("reference_vs_gt_db") is None:
        return {"criterion": "needs ground truth", "value_db": None, "passed": False}
    loss = comparison["reference_vs_gt_db"] - comparison["vs_gt_db"]
    return {"criterion": f"PSNR vs ground truth at most {PRECISION_LOSS_DB} dB below ONNX Runtime fp32's",
            "value_db": loss, "passed": bool(loss <= PRECISION_LOSS_DB + 1e-9)}


def step_deblur(out_dir: str, recordings: dict, exports: dict, precisions) -> dict:
    from spikereveal.engines.choice import EngineChoice
    from spikereveal.stream.offline import DeblurConfig, deblur

    config = DeblurConfig(k=K, write_video=False, overwrite=True)
    results = {}
    for geometry, recording in recordings.items():
        root = Path(out_dir) / "deblur" / geometry
        fp32 = exports.get(f"{geometry}/fp32", {})
        if not fp32.get("ok"):
            results[geometry] = {"ok": False, "error": "no fp32 export (see the export step)"}
            continue

        def run(item, geometry=geometry, recording=recording, root=root):
            engine, precision = item
            path = exports.get(f"{geometry}/{precision}", {})
            if not path.get("ok"):
                raise RuntimeError(f"no {precision} export (see the export step)")
            summary = deblur(recording, root / f"{engine}_{precision}",
                             EngineChoice(engine=engine, precision=precision, onnx_path=path["path"]), config)
            return {"frames": summary["frames_written"], "inference_ms_p50": summary["stages"]["inference"]["ms_p50"]}

        items = [("ort/fp32", ("ort", "fp32"))] + [(f"trt/{p}", ("trt", p)) for p in precisions]
        runs = _each(items, run)
        checks = {}
        if runs["ort/fp32"]["ok"]:
            for precision in precisions:
                if not runs.get(f"trt/{precision}", {}).get("ok"):
                    continue
                try:
                    comparison = compare_outputs(root / "ort_fp32", root / f"trt_{precision}", Path(recording))
                    checks[precision] = {**comparison, **judge(precision, comparison)}
                except Exception as exc:
                    checks[precision] = {"passed": False, "error": f"{type(exc).__name__}: {exc}"}
        results[geometry] = {"ok": True, "runs": runs, "checks": checks}
    return results


def step_bench_engines(out_dir: str, exports: dict, repeats: int, warmup: int = 3) -> dict:
    """``bench engines`` of the TensorRT engines built from these exports (its timing functions, its JSON
    layout: ``{geometry: {"trt", "trt-fp16", ...}, "environment"}``, so ``bench compare`` reads it)."""
    from spikereveal.bench.engines import _gpu_block, environment, random_window, summarise_window_times, time_runner
    from spikereveal.engines.runners import RunnerOptions, create_runner

    results: dict = {}
    for key, entry in exports.items():
        if not entry.get("ok"):
            continue
        geometry, precision = key.split("/")
        shape = _shape(geometry)
        image, spikes = random_window(shape)
        name = "trt" if precision == "fp32" else f"trt-{precision}"
        try:
            with create_runner("trt", shape, onnx_path=entry["path"], precision=precision,
                               options=RunnerOptions(warmup_runs=0)) as runner:
                gpu: list = []
                times = time_runner(runner, image, spikes, repeats, warmup, gpu)
                results.setdefault(geometry, {})[name] = {**summarise_window_times(times, shape.k),
                                                          **_gpu_block(runner, gpu, image, spikes, repeats)}
        except Exception as exc:
            logger.error("%s failed: %s\n%s", key, exc, traceback.format_exc())
            results.setdefault("errors", {})[key] = f"{type(exc).__name__}: {exc}"
    results["environment"] = {**environment(1), "k": K, "repeats": repeats, "warmup": warmup,
                              "transfers_included": True, "model": "the device check's exports"}
    return results


def step_bench_pipeline(out_dir: str, recording: str) -> dict:
    from spikereveal.bench.pipeline import bench_pipeline

    report = bench_pipeline(engine="trt", recording=recording, plot_dir=None)
    (Path(out_dir) / "bench_pipeline.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    keep = ("end_to_end", "throughput", "independent", "non_inference_target", "pipeline")
    return {key: report[key] for key in keep if key in report}


STEPS: dict[str, Callable] = {
    "environment": step_environment, "simulate": step_simulate, "export": step_export, "build": step_build,
    "deblur": step_deblur, "bench_engines": step_bench_engines, "bench_pipeline": step_bench_pipeline,
}


# -- running steps -------------------------------------------------------------------------------------------
def _step_main(name: str, kwargs: dict, result_path: str, log_path: str, cache_dir: str) -> None:
    """A step's child process: its own log file, the shared engine cache, the result as JSON."""
    os.environ["SPIKEREVEAL_CACHE"] = cache_dir  # every runner of every step shares the engines built once
    logging.basicConfig(filename=log_path, level=logging.INFO, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        outcome = {"status": "ok", "result": STEPS[name](**kwargs)}
    except BaseException as exc:  # noqa: BLE001 (a step's failure is data for the report)
        logging.getLogger(__name__).error("step %s failed:\n%s", name, traceback.format_exc())
        outcome = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    Path(result_path).write_text(json.dumps(outcome, default=str), encoding="utf-8")


def run_step(name: str, kwargs: dict, budget_s: float, out_dir: Path, target=_step_main) -> dict:
    """Run step ``name`` in a spawned process for at most ``budget_s``; never raises for the step's sake."""
    steps_dir = out_dir / "steps"
    steps_dir.mkdir(parents=True, exist_ok=True)
    result_path, log_path = steps_dir / f"{name}.json", steps_dir / f"{name}.log"
    result_path.unlink(missing_ok=True)
    entry = {"budget_s": round(budget_s, 1), "log": str(log_path)}
    if budget_s <= 1.0:
        return {**entry, "status": "skipped", "error": "no time left in the total budget", "seconds": 0.0}
    process = multiprocessing.get_context("spawn").Process(
        target=target, args=(name, kwargs, str(result_path), str(log_path), str(out_dir / "engine_cache")),
        name=f"device-check-{name}")
    started = time.perf_counter()
    process.start()
    process.join(budget_s)
    if process.is_alive():
        process.terminate()
        process.join(5.0)
        if process.is_alive():
            process.kill()
            process.join()
        return {**entry, "status": "timeout", "error": f"did not finish within its budget of {budget_s:.0f} s",
                "seconds": time.perf_counter() - started}
    seconds = time.perf_counter() - started
    if not result_path.is_file():
        return {**entry, "status": "crashed", "error": f"the step's process ended with exit code {process.exitcode} "
                f"and no result (see {log_path})", "seconds": seconds}
    outcome = json.loads(result_path.read_text(encoding="utf-8"))
    return {**entry, **outcome, "seconds": seconds}


def _ok_result(steps: dict, name: str):
    step = steps.get(name, {})
    return step.get("result") if step.get("status") == "ok" else None


def device_check(config: DeviceCheckConfig, progress: Progress | None = None, reason_fn=unavailable_reason,
                 step_runner=run_step) -> dict:
    """Run the check (or say at once why it cannot run here) and write the report; returns it.

    ``reason_fn`` and ``step_runner`` (``run_step``'s signature) are for tests."""
    out_dir = Path(config.out_dir)
    say = progress or (lambda message: None)
    started = time.perf_counter()
    report: dict = {"format": "spikereveal-device-check", "version": 1,
                    "criteria": {"fp32_agreement_db": FP32_AGREEMENT_DB, "precision_loss_db": PRECISION_LOSS_DB,
                                 "reference": "ONNX Runtime fp32 on the same export (CPU)"},
                    "steps": {}}
    reason = reason_fn()
    if reason is not None:
        report.update(status="skipped", reason=f"needs TensorRT and an NVIDIA GPU: {reason}", passed=None)
        return _write(report, out_dir)
    from spikereveal.engines.export import resolve_model_path

    model = str(resolve_model_path(config.model))
    report["model"] = model
    steps = report["steps"]

    def run(name, **kwargs):
        remaining = config.total_budget_s - (time.perf_counter() - started)
        budget = min(config.step_budgets_s.get(name, 60.0), remaining)
        say(f"{name} (budget {max(budget, 0):.0f} s)")
        steps[name] = step_runner(name, {"out_dir": str(out_dir), **kwargs}, budget, out_dir)
        say(f"{name}: {steps[name]['status']} in {steps[name]['seconds']:.1f} s")
        return _ok_result(steps, name)

    def missing(name, needs):
        steps[name] = {"status": "skipped", "error": f"needs the {needs} step", "seconds": 0.0}

    run("environment")
    recordings = run("simulate", geometries=list(config.geometries), exposures=config.exposures, seed=config.seed)
    exports = (run("export", recordings=recordings, precisions=list(config.precisions), model=model)
               if recordings else missing("export", "simulate"))
    if exports:
        run("build", exports=exports)
        run("deblur", recordings=recordings, exports=exports, precisions=list(config.precisions))
        run("bench_engines", exports=exports, repeats=config.bench_repeats)
    else:
        for name in ("build", "deblur", "bench_engines"):
            missing(name, "export")
    if recordings and "rsb" in recordings:
        run("bench_pipeline", recording=recordings["rsb"])
    else:
        missing("bench_pipeline", "simulate (rsb)")
    report["seconds"] = time.perf_counter() - started
    report["checks"] = _checks(steps)
    report["passed"] = all(step["status"] == "ok" for step in steps.values()) and bool(report["checks"]) and all(
        check["passed"] for check in report["checks"])
    report["status"] = "passed" if report["passed"] else "failed"
    return _write(report, out_dir)


def _checks(steps: dict) -> list[dict]:
    checks = []
    for geometry, entry in (_ok_result(steps, "deblur") or {}).items():
        for precision, check in (entry.get("checks") or {}).items():
            checks.append({"geometry": geometry, "precision": precision, **check})
    for key, entry in (_ok_result(steps, "build") or {}).items():
        if not entry.get("ok"):
            checks.append({"geometry": key.split("/")[0], "precision": key.split("/")[1],
                           "criterion": "engine builds with its precision verified", "passed": False,
                           "error": entry.get("error")})
    return checks


# -- report ---------------------------------------------------------------------------------------------------
def _num(value, fmt=".2f") -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def format_markdown(report: dict) -> str:
    lines = ["# spikereveal device check", ""]
    if report.get("status") == "skipped":
        lines += [f"**Skipped**: {report['reason']}.", "",
                  "Run it on a machine with an NVIDIA GPU (or a Jetson) and TensorRT; see bench/README.md."]
        return "\n".join(lines) + "\n"
    env = _ok_result(report["steps"], "environment") or {}
    lines += [f"**{report['status'].upper()}** in {_num(report.get('seconds'), '.0f')} s. GPU: "
              f"{env.get('gpu_name', '?')} (sm {''.join(map(str, env.get('compute_capability', [])))}), "
              f"TensorRT {env.get('tensorrt', '?')}, {env.get('cuda_bindings', '?')} ({env.get('cuda_module', '?')})"
              + (f", Jetson: {env['jetson'].get('model')} / {env['jetson'].get('power_mode')}"
                 if env.get("jetson") else "") + f". Model: {report.get('model')}.", "",
              "## Steps", "", "| step | status | seconds | budget s | note |", "| --- | --- | --- | --- | --- |"]
    for name, step in report["steps"].items():
        lines.append(f"| {name} | {step['status']} | {_num(step.get('seconds'), '.1f')} | "
                     f"{_num(step.get('budget_s'), '.0f')} | {step.get('error', '')} |")
    lines += ["", "## Frames: TensorRT against ONNX Runtime fp32 (the CPU reference, same export)", "",
              f"fp32: frame-against-frame PSNR >= {FP32_AGREEMENT_DB} dB. fp16/int8: PSNR against the ground truth at "
              f"most {PRECISION_LOSS_DB} dB below ONNX Runtime fp32's on the same frames.", "",
              "| geometry | precision | vs ORT fp32 dB | ORT fp32 vs GT dB | TRT vs GT dB | criterion value | passed |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for check in report.get("checks", []):
        lines.append(f"| {check['geometry']} | {check['precision']} | {_num(check.get('vs_reference_db'))} | "
                     f"{_num(check.get('reference_vs_gt_db'))} | {_num(check.get('vs_gt_db'))} | "
                     f"{_num(check.get('value_db'))} | {'yes' if check.get('passed') else 'NO'} "
                     f"{check.get('error', '')} |")
    bench = _ok_result(report["steps"], "bench_engines") or {}
    lines += ["", "## Inference per exposure window (K = 7), host wall time with copies; GPU split from CUDA events",
              "", "| geometry | engine | window p50 ms | p99 ms | frames/s | h2d ms | compute ms | d2h ms | "
              "2 in flight ms/window |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    trtexec = []
    for geometry, table in bench.items():
        if geometry in ("environment", "errors"):
            continue
        for name, entry in table.items():
            lines.append(f"| {geometry} | {name} | {_num(entry.get('window_ms_p50'))} | "
                         f"{_num(entry.get('window_ms_p99'))} | {_num(entry.get('frames_per_s'))} | "
                         f"{_num(entry.get('h2d_ms_p50'))} | {_num(entry.get('compute_ms_p50'))} | "
                         f"{_num(entry.get('d2h_ms_p50'))} | {_num(entry.get('overlapped_window_ms_mean'))} |")
            if entry.get("trtexec"):
                trtexec.append(f"    {entry['trtexec']}")
    if trtexec:
        lines += ["", "Cross-check with trtexec (compare its GPU Compute Time with `compute ms`; its Latency "
                  "includes the copies unless `--noDataTransfers`, and TensorRT 11's trtexec leaves them out by "
                  "default):", ""] + trtexec
    pipeline = _ok_result(report["steps"], "bench_pipeline") or {}
    if pipeline:
        lines += ["", "## Pipeline (rsb, replay -> serve --engine trt, loopback)", "",
                  "```", json.dumps({key: pipeline.get(key) for key in ("end_to_end", "throughput",
                                                                        "non_inference_target")},
                                    indent=2, default=str)[:4000], "```"]
    return "\n".join(lines) + "\n"


def _write(report: dict, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    report["files"] = {"json": str(out_dir / REPORT_JSON), "markdown": str(out_dir / REPORT_MD)}
    (out_dir / REPORT_JSON).write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n",
                                       encoding="utf-8")
    (out_dir / REPORT_MD).write_text(format_markdown(report), encoding="utf-8")
    return report


def format_summary(report: dict) -> str:
    """The CLI's short text."""
    if report.get("status") == "skipped":
        return f"device-check skipped: {report['reason']}; nothing was run (exit 0)"
    lines = [f"device-check {report['status'].upper()} in {_num(report.get('seconds'), '.0f')} s"]
    for name, step in report["steps"].items():
        lines.append(f"  {name:<15} {step['status']:<8} {_num(step.get('seconds'), '.1f')} s"
                     + (f"  {step['error']}" if step.get("error") else ""))
    for check in report.get("checks", []):
        lines.append(f"  {check['geometry']}/{check['precision']}: {check.get('criterion', '')}: "
                     f"{_num(check.get('value_db'))} dB -> {'pass' if check.get('passed') else 'FAIL'}")
    return "\n".join(lines)
