"""bench transport: the real replay publisher into the real ingest path, on a small geometry so it runs fast."""

from __future__ import annotations

import argparse
import json

import pytest

zmq = pytest.importorskip("zmq")

from spikereveal.bench.transport import bench_transport, format_table  # noqa: E402
from spikereveal.errors import ConfigError  # noqa: E402


def test_paced_run_delivers_every_frame_and_reports_rates():
    result = bench_transport(height=32, width=40, block_frames=16, seconds=0.5, rates_hz=(8000.0,))
    (run,) = result["runs"]
    assert result["frames_per_run"] == 4000 and run["frames_sent"] == 4000
    assert run["loss"] == {"frames_lost": 0, "gaps": 0, "publisher_drops": 0, "malformed": 0, "complete": True}
    assert run["messages_received"] == 4000 // 16
    # paced: the achieved rate cannot exceed the target by more than the first block's head start
    assert 0.5 * 8000 < run["frames_per_s"] < 1.5 * 8000
    lat = run["latency_per_block"]
    assert lat["count"] == 250 and 0 < lat["p50_ms"] <= lat["p99_ms"]
    assert "8,000" in format_table(result).splitlines()[2]  # the target column
    json.dumps(result)


def test_unpaced_run_reports_loss_instead_of_hiding_it():
    result = bench_transport(height=16, width=16, block_frames=8, seconds=0.2, rates_hz=(None,))
    (run,) = result["runs"]
    assert run["target_frames_per_s"] is None
    loss = run["loss"]
    assert loss["frames_lost"] == run["frames_sent"] - run["frames_received"] >= 0
    # every lost frame shows as a sequence gap at the receiver (the final heartbeats reveal tail loss), and
    # the publisher counted at least as many drops (its heartbeats can be dropped too): no silent loss
    assert loss["frames_lost"] == 8 * loss["gaps"]
    assert loss["publisher_drops"] >= loss["gaps"]


@pytest.mark.parametrize("kwargs", [{"endpoint": "inproc"}, {"height": 3, "width": 5}, {"seconds": 0}])
def test_bad_arguments_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        bench_transport(**kwargs)


def test_cli_writes_json(tmp_path):
    from spikereveal.commands import bench

    parser = argparse.ArgumentParser()
    bench.register(parser.add_subparsers())
    out = tmp_path / "transport.json"
    args = parser.parse_args(["bench", "transport", "--height", "16", "--width", "16", "--block", "8",
                              "--seconds", "0.2", "--rate-hz", "4000", "--paced-only", "--json", str(out)])
    assert args.func(args) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "transport" and len(result["runs"]) == 1
    assert result["runs"][0]["loss"]["complete"]


@pytest.mark.parametrize("rates", [(4000.0, None), (None,)])
def test_runs_leave_no_socket_folders_behind(monkeypatch, rates):
    import tempfile
    from pathlib import Path

    made = []
    real_mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(*args, **kwargs):
        made.append(real_mkdtemp(*args, **kwargs))
        return made[-1]

    before = {p.name for p in Path("/tmp").glob("sr-bt-*")}
    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    bench_transport(height=16, width=16, block_frames=8, seconds=0.1, rates_hz=rates)
    assert len(made) == len(rates)  # one ipc folder per run, each removed after it
    assert not any(Path(folder).exists() for folder in made)
    after = {p.name for p in Path("/tmp").glob("sr-bt-*")}
    assert len(after) <= len(before) and not after - before  # temp entries counted before and after
