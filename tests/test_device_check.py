"""``bench device-check`` without a GPU: the exit-0 skip (CLI), the step runner's failure/timeout/crash
records, the orchestration and report with stand-in steps, and the frame comparison and criteria."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from spikereveal.bench import device_check as dc


def test_cli_without_a_gpu_exits_0_at_once_and_says_why(tmp_path):
    from cli_support import run_cli

    result = run_cli("bench", "device-check", "--out", tmp_path / "dc", timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    assert "device-check skipped: needs TensorRT and an NVIDIA GPU" in result.stdout
    assert "tensorrt" in result.stdout  # the reason: no TensorRT module here
    report = json.loads((tmp_path / "dc" / dc.REPORT_JSON).read_text())
    assert report["status"] == "skipped" and report["steps"] == {}
    assert "Skipped" in (tmp_path / "dc" / dc.REPORT_MD).read_text()


def test_no_cuda_device_is_a_skip_too(tmp_path):
    report = dc.device_check(dc.DeviceCheckConfig(out_dir=str(tmp_path)),
                             reason_fn=lambda: "CUDA cudaGetDeviceCount failed (cudaErrorNoDevice)")
    assert report["status"] == "skipped" and "cudaErrorNoDevice" in report["reason"]
    assert "nothing was run" in dc.format_summary(report)


def test_step_runner_records_failure_timeout_and_crash(tmp_path):
    from device_check_support import crasher, sleeper

    failed = dc.run_step("simulate", {"out_dir": str(tmp_path), "geometries": ["nope"], "exposures": 1, "seed": 0},
                         60, tmp_path)
    assert failed["status"] == "failed" and "nope" in failed["error"]
    assert "Traceback" in (tmp_path / "steps" / "simulate.log").read_text()  # the detail is in the step's log
    timed = dc.run_step("build", {}, 2.0, tmp_path, target=sleeper)
    assert timed["status"] == "timeout" and timed["seconds"] < 20 and "budget of 2 s" in timed["error"]
    crashed = dc.run_step("deblur", {}, 60, tmp_path, target=crasher)
    assert crashed["status"] == "crashed" and "exit code 3" in crashed["error"]
    assert dc.run_step("export", {}, 0.5, tmp_path)["status"] == "skipped"


def canned_steps(fail: str | None = None, loss_db: float = 0.1):
    deblur = {"gopro": {"ok": True, "runs": {}, "checks": {
        "fp32": {"vs_reference_db": 52.0, **dc.judge("fp32", {"vs_reference_db": 52.0})},
        "fp16": {"vs_reference_db": 44.0, "reference_vs_gt_db": 25.0, "vs_gt_db": 25.0 - loss_db,
                 **dc.judge("fp16", {"vs_reference_db": 44.0, "reference_vs_gt_db": 25.0, "vs_gt_db": 25.0 - loss_db})},
    }}}
    results = {
        "environment": {"gpu_name": "Fake GPU", "compute_capability": [8, 7], "tensorrt": "10.3.0"},
        "simulate": {"gopro": "rec/gopro", "rsb": "rec/rsb"},
        "export": {"gopro/fp32": {"ok": True, "path": "a.onnx"}, "gopro/fp16": {"ok": True, "path": "b.onnx"}},
        "build": {"gopro/fp32": {"ok": True}, "gopro/fp16": {"ok": True}},
        "deblur": deblur,
        "bench_engines": {"gopro": {"trt": {"window_ms_p50": 5.0, "window_ms_p99": 6.0, "frames_per_s": 1400.0,
                                            "h2d_ms_p50": 1.0, "compute_ms_p50": 3.0, "d2h_ms_p50": 1.0,
                                            "trtexec": "trtexec --loadEngine=x.plan --shapes=image:1x720x1280x3"}},
                          "environment": {}},
        "bench_pipeline": {"end_to_end": {"ms_p50": 20.0}},
    }
    seen = []

    def runner(name, kwargs, budget_s, out_dir):
        seen.append((name, budget_s))
        if name == fail:
            return {"status": "failed", "error": "RuntimeError: boom", "seconds": 1.0, "budget_s": budget_s}
        return {"status": "ok", "result": results[name], "seconds": 1.0, "budget_s": budget_s}

    return runner, seen


def test_orchestration_and_report_with_stand_in_steps(tmp_path):
    runner, seen = canned_steps()
    config = dc.DeviceCheckConfig(out_dir=str(tmp_path))
    report = dc.device_check(config, reason_fn=lambda: None, step_runner=runner)
    assert [name for name, _ in seen] == list(dc.STEPS)
    assert all(budget <= dc.STEP_BUDGETS_S[name] for name, budget in seen)
    assert report["status"] == "passed" and report["passed"] is True
    assert sum(dc.STEP_BUDGETS_S.values()) > dc.TOTAL_BUDGET_S <= 8 * 60  # the total caps the steps
    markdown = (tmp_path / dc.REPORT_MD).read_text()
    assert "| gopro | fp16 |" in markdown and "trtexec --loadEngine=x.plan" in markdown
    assert json.loads((tmp_path / dc.REPORT_JSON).read_text())["status"] == "passed"


def test_a_failed_step_is_recorded_and_dependent_steps_skip(tmp_path):
    runner, seen = canned_steps(fail="simulate")
    report = dc.device_check(dc.DeviceCheckConfig(out_dir=str(tmp_path)), reason_fn=lambda: None,
                             step_runner=runner)
    assert report["status"] == "failed"
    assert report["steps"]["simulate"] == {"status": "failed", "error": "RuntimeError: boom", "seconds": 1.0,
                                           "budget_s": dc.STEP_BUDGETS_S["simulate"]}
    assert report["steps"]["deblur"]["status"] == "skipped" and "export" in report["steps"]["deblur"]["error"]
    assert [name for name, _ in seen] == ["environment", "simulate"]
    assert "boom" in dc.format_summary(report)


def test_a_precision_loss_over_the_bound_fails_the_check(tmp_path):
    runner, _ = canned_steps(loss_db=0.5)
    report = dc.device_check(dc.DeviceCheckConfig(out_dir=str(tmp_path)), reason_fn=lambda: None,
                             step_runner=runner)
    assert report["status"] == "failed"
    failing = [check for check in report["checks"] if not check["passed"]]
    assert [(c["precision"], round(c["value_db"], 3)) for c in failing] == [("fp16", 0.5)]


def test_judge_bounds():
    assert dc.judge("fp32", {"vs_reference_db": 45.0})["passed"]
    assert not dc.judge("fp32", {"vs_reference_db": 44.9})["passed"]
    assert dc.judge("int8", {"reference_vs_gt_db": 25.0, "vs_gt_db": 24.7})["passed"]
    assert not dc.judge("int8", {"reference_vs_gt_db": 25.0, "vs_gt_db": 24.69})["passed"]
    assert not dc.judge("fp16", {"vs_reference_db": 50.0, "reference_vs_gt_db": None, "vs_gt_db": None})["passed"]


def write_frames(directory, frames, name="frames.csv", header=("exposure_index", "t_ns", "image")):
    import cv2

    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / name, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        for (exposure, t_ns), image in frames.items():
            path = f"f_{exposure}_{t_ns}.png"
            cv2.imwrite(str(directory / path), image)
            writer.writerow([exposure, t_ns, path])


def test_compare_outputs_against_reference_and_ground_truth(tmp_path):
    rng = np.random.default_rng(0)
    truth = {(0, t): rng.integers(0, 256, (8, 12, 3), dtype=np.uint8) for t in (100, 200)}
    noisy = {key: np.clip(image.astype(int) + rng.integers(-3, 4, image.shape), 0, 255).astype(np.uint8)
             for key, image in truth.items()}
    write_frames(tmp_path / "rec", truth, "gt.csv", ("exposure_index", "t_ns", "image"))
    write_frames(tmp_path / "ref", truth)
    write_frames(tmp_path / "same", truth)
    write_frames(tmp_path / "noisy", {(0, t + 1): image for (_, t), image in noisy.items()})  # 1 ns off: nearest
    same = dc.compare_outputs(tmp_path / "ref", tmp_path / "same", tmp_path / "rec")
    assert same["frames"] == 2 and same["vs_reference_db"] == 100.0 and same["vs_gt_db"] == 100.0
    with pytest.raises(ValueError, match="no frame in common"):
        dc.compare_outputs(tmp_path / "ref", tmp_path / "noisy", tmp_path / "rec")
    write_frames(tmp_path / "noisy2", noisy)
    result = dc.compare_outputs(tmp_path / "ref", tmp_path / "noisy2", tmp_path / "rec")
    assert 35 < result["vs_reference_db"] < 50 and result["reference_vs_gt_db"] == 100.0
    assert result["vs_gt_db"] == pytest.approx(result["vs_reference_db"])
