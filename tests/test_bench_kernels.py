"""The kernel benchmark: JSON schema on a tiny run and the ``bench kernels`` command (no speed asserted)."""

import argparse
import json

import pytest

from spikereveal.bench.kernels import format_table, run_kernel_bench
from spikereveal.commands import bench
from spikereveal.errors import ConfigError

KERNELS = ("accumulate", "accumulate_exposure", "accumulate_stream", "extract_window", "extract_window_float32")
TINY = dict(height=8, width=16, frames=40, repeats=1, seed=3)


def check_schema(result: dict) -> None:
    for name in KERNELS:
        entry = result[name]
        for key in ("frames_per_s", "baseline_frames_per_s", "speedup", "seconds", "baseline_seconds"):
            assert isinstance(entry[key], float) and entry[key] > 0, (name, key)
        assert entry["speedup"] == pytest.approx(entry["frames_per_s"] / entry["baseline_frames_per_s"])
    assert {"calls_per_s", "baseline_calls_per_s", "speedup"} <= set(result["tfi"])
    assert isinstance(result["accumulate"]["meets_target"], bool)
    assert result["accumulate"]["frames_per_call"] == TINY["frames"]
    assert result["extract_window"]["frames_per_call"] == 7 * 21
    h, w = TINY["height"], TINY["width"]
    for name, dtype, itemsize in (("extract_window", "uint8", 1), ("extract_window_float32", "float32", 4)):
        entry = result[name]
        assert entry["dtype"] == dtype and entry["output_bytes_per_call"] == 7 * 21 * h * w * itemsize
        assert entry["write_floor_frames_per_s"] > 0 and entry["numpy_over_write_floor"] > 0
    assert result["extract_window"]["target_speedup"] == 3.0
    assert isinstance(result["extract_window"]["meets_target"], bool)
    machine = result["machine"]
    for key in ("cpu", "cores", "python", "numpy", "numba"):
        assert machine[key], key
    assert machine["numba_threads"] == 1
    assert result["geometry"] == {k: TINY[k] for k in ("height", "width", "frames", "repeats")}


def test_tiny_run_has_the_documented_schema():
    result = run_kernel_bench(**TINY)
    check_schema(result)
    json.dumps(result)  # JSON-ready: plain floats, ints, bools and strings
    table = format_table(result)
    for name in KERNELS + ("tfi",):
        assert name in table
    assert "numba" in table


@pytest.mark.parametrize("bad", [dict(frames=20), dict(repeats=0), dict(k=0), dict(height=3, width=3)])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ConfigError):
        run_kernel_bench(**{**TINY, **bad})


def build_parser():
    parser = argparse.ArgumentParser(prog="spikereveal")
    subparsers = parser.add_subparsers(dest="command")
    bench.register(subparsers)
    return parser


def test_bench_kernels_command_prints_a_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "out" / "kernels.json"
    args = build_parser().parse_args(
        ["bench", "kernels", "--json", str(path), "--frames", "40", "--repeats", "1",
         "--height", "8", "--width", "16", "--seed", "3"]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "accumulate" in printed and str(path) in printed
    check_schema(json.loads(path.read_text()))


def test_bench_needs_a_subverb_and_valid_numbers(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["bench"])
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "kernels", "--frames", "0"])
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "kernels", "--repeats", "many"])
    args = parser.parse_args(["bench", "kernels"])
    assert (args.frames, args.repeats, args.height, args.width, args.json) == (2048, 5, 250, 400, None)
