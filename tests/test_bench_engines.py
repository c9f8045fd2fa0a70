"""bench engines: percentile and summary maths, the JSON layout, skipped runners; tiny geometry for speed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spikereveal.bench.engines import bench_engines, geometry_shape, ratio, summarise_window_times
from spikereveal.stream.stats import nearest_rank_percentile
from spikereveal.engines.runners import InputShape
from spikereveal.errors import ConfigError


def nearest_rank_reference(values, q):
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


@pytest.mark.parametrize("n", [1, 2, 7, 100, 101])
@pytest.mark.parametrize("q", [50, 90, 99, 100])
def test_nearest_rank_percentile(n, q):
    values = np.random.default_rng(n).random(n).tolist()
    assert nearest_rank_percentile(values, q) == nearest_rank_reference(values, q)


def test_summary_of_window_times():
    times = [0.010] * 98 + [0.020, 0.500]
    summary = summarise_window_times(times, k=7)
    assert summary["window_ms_p50"] == pytest.approx(10.0)
    assert summary["window_ms_p99"] == pytest.approx(20.0)
    assert summary["frames_per_s"] == pytest.approx(7 / np.mean(times))
    assert summary["repeats"] == 100
    with pytest.raises(ConfigError):
        nearest_rank_percentile([], 50)


def test_geometries():
    assert geometry_shape("gopro") == InputShape(7, 720, 1280)
    assert geometry_shape("rsb", k=3) == InputShape(3, 1000, 1600)
    assert geometry_shape((64, 96), k=2) == InputShape(2, 64, 96)
    with pytest.raises(ConfigError):
        geometry_shape("vga")


def test_bench_json_layout_on_a_tiny_geometry(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    seen = []
    results = bench_engines(runners=("ort", "torch", "trt"), geometries=((64, 96),), repeats=3, warmup=1, k=2,
                            threads=1, precisions=("fp32", "int8"), work_dir=tmp_path, progress=seen.append)
    table = results["64x96"]
    assert set(table) == {"ort", "ort-int8", "torch"}  # torch is the fp32 reference only
    for entry in table.values():
        assert entry["repeats"] == 3
        assert 0 < entry["window_ms_p50"] <= entry["window_ms_p99"]
        assert entry["frames_per_s"] == pytest.approx(2 / (entry["window_ms_mean"] / 1e3))
    env = results["environment"]
    assert set(results) == {"64x96", "environment"}
    assert "trt" in env["skipped_runners"] or "trt" in table
    assert env["k"] == 2 and env["threads"] == 1 and env["onnxruntime"]
    assert seen == ["64x96 ort", "64x96 ort-int8", "64x96 torch"]
    assert ratio(results, "64x96", "ort", "torch") == pytest.approx(
        table["torch"]["window_ms_p50"] / table["ort"]["window_ms_p50"])
    assert ratio(results, "64x96", "trt", "torch") is None or "trt" in table


def test_bench_sequential_mode(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    results = bench_engines(runners=("ort",), geometries=((32, 48),), repeats=2, warmup=0, k=1, threads=1,
                            work_dir=tmp_path, interleave=False)
    assert results["32x48"]["ort"]["repeats"] == 2 and results["environment"]["interleaved"] is False


def test_bench_argument_errors():
    with pytest.raises(ConfigError):
        bench_engines(repeats=0)
    with pytest.raises(ConfigError):
        bench_engines(precisions=("fp64",))


def test_cli_bench_engines_subverb(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import json

    from spikereveal import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ("bench",))
    out = tmp_path / "engines.json"
    rc = cli.main(["bench", "engines", "--geometry", "32x48", "--runner", "ort", "torch", "--repeats", "2",
                   "--warmup", "0", "--k", "2", "--threads", "1", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "ort is" in printed and "faster than torch" in printed
    results = json.loads(out.read_text())
    assert set(results["32x48"]) == {"ort", "torch"}
    assert set(results["32x48"]["ort"]) >= {"window_ms_p50", "window_ms_p99", "frames_per_s"}
