"""Latency plots: three decodable PNG files from a manual-clock run, degenerate runs, missing matplotlib."""

import sys

import cv2
import numpy as np
import pytest
from bench_support import synthetic_run

from spikereveal.bench.plots import PLOT_NAMES, plot_latency_cdf, plot_throughput, plot_timeline, write_plots
from spikereveal.errors import ConfigError, MissingDependencyError

pytest.importorskip("matplotlib")


def _decoded(path):
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f"{path} is not a decodable image"
    return image


def test_write_plots_writes_three_pngs(tmp_path):
    paths = write_plots(synthetic_run(30, dropped=(7,)).trace(), tmp_path / "plots", warmup=3)
    assert tuple(paths) == PLOT_NAMES
    for name, path in paths.items():
        assert path == tmp_path / "plots" / f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = _decoded(path)
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 5, f"{name} is blank"  # something was drawn


def test_plots_of_a_run_without_outputs_are_still_written(tmp_path):
    trace = synthetic_run(3, dropped=(0, 1, 2)).trace()
    for path in write_plots(trace, tmp_path).values():
        _decoded(path)
    empty = synthetic_run(0).trace()
    for path in write_plots(empty, tmp_path / "empty").values():
        _decoded(path)


def test_single_plots_and_their_arguments(tmp_path):
    trace = synthetic_run(12).trace()
    _decoded(plot_latency_cdf({"a": np.array([1.0, 2.0, 4.0]), "empty": np.array([])}, tmp_path / "cdf.png"))
    tall = _decoded(plot_timeline(trace, tmp_path / "tall.png", max_exposures=12))
    short = _decoded(plot_timeline(trace, tmp_path / "short.png", max_exposures=2))
    assert tall.shape[0] > short.shape[0]  # one row per exposure
    _decoded(plot_throughput(trace, tmp_path / "rate.png", window=3))
    with pytest.raises(ConfigError):
        plot_timeline(trace, tmp_path / "x.png", max_exposures=0)
    with pytest.raises(ConfigError):
        plot_throughput(trace, tmp_path / "x.png", window=0)


def test_missing_matplotlib_names_the_plot_extra(tmp_path, monkeypatch):
    for name in [name for name in sys.modules if name == "matplotlib" or name.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(MissingDependencyError, match=r"spikereveal\[plot\]"):
        write_plots(synthetic_run(3).trace(), tmp_path)


def test_cli_bench_report_writes_plots(tmp_path, monkeypatch, capsys):
    from spikereveal import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ("bench",))
    trace_path = synthetic_run(15).save(tmp_path / "run.npz")
    assert cli.main(["bench", "report", str(trace_path), "--plot", str(tmp_path / "png"), "--warmup", "0"]) == 0
    for name in PLOT_NAMES:
        _decoded(tmp_path / "png" / f"{name}.png")
    assert "timeline.png" in capsys.readouterr().out


def test_timeline_and_cdf_label_the_queue_wait_as_such(tmp_path, monkeypatch):
    import spikereveal.bench.plots as plots
    from spikereveal.bench.report import span_durations_ms

    figures = []
    real_save = plots._save
    monkeypatch.setattr(plots, "_save", lambda figure, path: figures.append(figure) or real_save(figure, path))
    trace = synthetic_run(6).trace()
    plot_timeline(trace, tmp_path / "timeline.png")
    plot_latency_cdf(span_durations_ms(trace), tmp_path / "cdf.png")
    timeline, cdf = (figure.axes[0].get_legend_handles_labels()[1] for figure in figures)
    assert "queue wait + input prep" in timeline and "preprocess" not in timeline
    assert any(label.startswith("queue wait + input prep (p99") for label in cdf)
    assert not any(label.startswith("preprocess") for label in cdf)
