"""serve end to end on loopback: replay -> serve --save gives deblur's frames; counters JSON; CLI; workers."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs torch: the [train] extra")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
zmq = pytest.importorskip("zmq")
cv2 = pytest.importorskip("cv2")

from engines_support import SPIKE_H, SPIKE_W, make_recording, psnr, save_random_checkpoint  # noqa: E402
from stream_support import ServerThread, free_tcp_endpoints  # noqa: E402
from spikereveal.engines.choice import EngineChoice  # noqa: E402
from spikereveal.stream.offline import DeblurConfig, deblur  # noqa: E402
from spikereveal.stream.config import load_serve_config  # noqa: E402
from spikereveal.stream.graph import COUNTER_KEYS  # noqa: E402

K = 3
EXPOSURES = 5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "ldn.pt", seed=5)


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    # the last exposure's trailing margin is cut off: deblur and serve must both skip it
    return make_recording(tmp_path_factory.mktemp("rec") / "rec", exposures=EXPOSURES, seed=2,
                          frames=10 + (EXPOSURES - 1) * 30 + 21 + 5)


@pytest.fixture(scope="module")
def deblurred(recording, checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("deblur")
    summary = deblur(recording, out, EngineChoice(engine="ort", model=str(checkpoint)),
                     DeblurConfig(k=K, write_video=False))
    onnx = next((out / "onnx").glob("*.onnx"))
    return out, summary, onnx


_IPC_FOLDERS: list[str] = []  # made by _endpoints(), removed after each test


def _endpoints():
    folder = tempfile.mkdtemp(prefix="sr-", dir="/tmp")  # ipc paths must stay short
    _IPC_FOLDERS.append(folder)
    return f"ipc://{folder}/s", f"ipc://{folder}/r", f"ipc://{folder}/o"


def _remove_ipc_folders():
    while _IPC_FOLDERS:
        shutil.rmtree(_IPC_FOLDERS.pop(), ignore_errors=True)


@pytest.fixture(autouse=True)
def _clean_ipc_folders():
    yield
    _remove_ipc_folders()


def test_endpoint_folders_are_removed_after_each_test():
    def ours():
        return {p for p in Path("/tmp").glob("sr-*") if str(p) in _IPC_FOLDERS}

    created = [Path(_endpoints()[0][len("ipc://"):]).parent for _ in range(2)]
    assert all(folder.is_dir() for folder in created) and len(ours()) == 2
    _remove_ipc_folders()  # what the autouse fixture does after every test
    assert not any(folder.exists() for folder in created) and not ours() and not _IPC_FOLDERS


def replay_into_serve(recording_path, config, speed=1.0, block=8, on_ready=None):
    """Run serve (thread) and replay (this thread) on loopback; returns serve's counters and replay stats."""
    from spikereveal.recording import open_recording
    from spikereveal.stream.replay import LiveReplay, ReplayConfig

    serving = ServerThread(config).start()
    if on_ready is not None:
        on_ready(serving.server)
    replay_config = ReplayConfig(speed=speed, block_frames=block, wait_for_subscribers=True, start_delay_s=0,
                                 subscriber_timeout_s=20, drain_s=0.2, heartbeat_interval_s=0.02)
    with open_recording(recording_path, strict=False) as rec:
        with LiveReplay(rec, config.spike_endpoint, config.rgb_endpoint, replay_config) as replay:
            stats = replay.run()
    return serving.join(), stats


def _rows(out):
    with open(out / "frames.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def _serve_config(tmp_path, onnx, **changes):
    spike, rgb, output = _endpoints()
    worker = {"save_dir": str(tmp_path / "serve"), "queue_capacity_jobs": 8}
    worker.update(changes.pop("worker", {}))
    return load_serve_config(
        None, spike_endpoint=spike, rgb_endpoint=rgb, output_endpoint=output, spike_height=SPIKE_H,
        spike_width=SPIKE_W, idle_timeout_s=1.0, stats_json=str(tmp_path / "stats.json"),
        sync={"k": K}, engine={"engine": "ort", "onnx": str(onnx), "threads": 1}, worker=worker, **changes)


def _compare_with_deblur(deblur_out, serve_out):
    header, expected = _rows(deblur_out)
    serve_header, got = _rows(serve_out)
    assert serve_header == header
    assert got == expected  # same exposures, times and file names, in the same order
    worst = np.inf
    for _, _, name in expected:
        a = cv2.imread(str(deblur_out / name))
        b = cv2.imread(str(serve_out / name))
        worst = min(worst, psnr(a / 255.0, b / 255.0))
    assert worst >= 50.0
    return worst


@pytest.mark.parametrize("speed", [1.0, 5.0])
def test_serve_save_matches_deblur(recording, deblurred, tmp_path, speed):
    deblur_out, summary, onnx = deblurred
    assert summary["exposures_processed"] == EXPOSURES - 1
    config = _serve_config(tmp_path, onnx)
    counters, stats = replay_into_serve(recording, config, speed=speed)
    assert stats.dropped_messages == 0
    _compare_with_deblur(deblur_out, tmp_path / "serve")
    assert counters["exposures_done"] == EXPOSURES - 1
    assert counters["exposures_received"] == EXPOSURES
    assert counters["malformed"] == counters["gaps"] == counters["exposures_dropped"] == 0
    assert counters["frames_saved"] == counters["output_messages"] == K * (EXPOSURES - 1)
    assert counters["stop_reason"] == "idle_timeout"


def test_counters_json_schema(recording, deblurred, tmp_path):
    _, _, onnx = deblurred
    config = _serve_config(tmp_path, onnx, worker={"save_dir": None})
    counters, _ = replay_into_serve(recording, config, speed=5.0)
    written = json.loads((tmp_path / "stats.json").read_text())
    assert written == json.loads(json.dumps(counters))
    for key in ("messages", "malformed", "gaps", "late", "duplicates", "exposures_done", "exposures_skipped",
                "exposures_dropped", *COUNTER_KEYS):
        assert isinstance(written[key], int) and not isinstance(written[key], bool), key
    assert written["messages"] > 0 and written["exposures_done"] == EXPOSURES - 1
    assert written["out_of_domain_exposures"] == 0  # the model declares no trained firing-gain range
    # the last exposure's window never completes: skipped on the heartbeat, or still pending at exit
    assert written["exposures_skipped"] + written["exposures_pending_at_exit"] == 1
    latency = written["latency"]
    for name in ("end_to_end_ms", "non_inference_work_ms", "inference_ms"):
        assert latency[name]["count"] == EXPOSURES - 1
        assert 0 < latency[name]["p50_ms"] <= latency[name]["p99_ms"]
    assert latency["inference_ms"]["p50_ms"] < latency["end_to_end_ms"]["p99_ms"]


def test_published_frames_reach_a_subscriber(recording, deblurred, tmp_path):
    from spikereveal.stream import transport
    from spikereveal.stream.protocol import SharpFrame, decode

    deblur_out, _, onnx = deblurred
    config = _serve_config(tmp_path, onnx, worker={"save_dir": None, "output_pixel_format": "bgr8"})
    context = zmq.Context()
    frames, threads = [], []

    def consume(sub):
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        try:
            while len(frames) < K * (EXPOSURES - 1) and poller.poll(20000):
                frames.append(decode(sub.recv_multipart(copy=False)))
        finally:
            sub.close(linger=0)

    def subscribe(server):  # serve has bound its output: a viewer connects
        thread = threading.Thread(target=consume, args=(transport.open_subscriber(context, server.output_endpoint),))
        thread.start()
        threads.append(thread)

    try:
        replay_into_serve(recording, config, speed=2.0, on_ready=subscribe)
        threads[0].join(30)
    finally:
        context.term()
    assert len(frames) == K * (EXPOSURES - 1)
    assert all(isinstance(f, SharpFrame) for f in frames)
    _, rows = _rows(deblur_out)
    assert [(f.exposure_id, f.t_ns, f.k) for f in frames] == [
        (int(r[0]), int(r[1]), int(r[2].split("_")[-1][:2])) for r in rows]
    for frame, (_, _, name) in zip(frames, rows):
        assert np.array_equal(frame.image, cv2.imread(str(deblur_out / name)))


def test_cli_serve_arguments_build_the_config(tmp_path):
    import argparse

    from spikereveal.commands import serve as command

    rig = tmp_path / "rig.json"
    rig.write_text(json.dumps({
        "format": "spikereveal-serve", "version": 1,
        "endpoints": {"spike": "tcp://cam:1", "rgb": "tcp://cam:2", "output": "tcp://*:3"},
        "geometry": {"spike_height": 250, "spike_width": 400},
        "sync": {"rgb_to_spike_offset_ns": 1500, "max_pending_exposures": 4},
        "worker": {"queue_capacity_jobs": 3, "save_dir": "out"},
        "engine": {"engine": "ort", "onnx": "model.onnx"},
    }))
    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--config", str(rig), "--output-endpoint", "tcp://*:9", "--queue", "5",
                              "--exit-after", "7"])
    config = command.config_from_args(args)
    assert config.spike_endpoint == "tcp://cam:1" and config.output_endpoint == "tcp://*:9"
    assert config.spike_shape == (250, 400) and config.exit_after_exposures == 7
    assert config.sync.rgb_to_spike_offset_ns == 1500 and config.sync.max_pending_exposures == 4
    assert config.worker.queue_capacity_jobs == 5
    assert config.worker.save_dir == str(tmp_path / "out") and config.engine.onnx == str(tmp_path / "model.onnx")


@pytest.mark.parametrize("content, message", [
    ({"sync": {"k": 0}}, "k"),
    ({"worker": {"when_full": "block"}}, "when_full"),
    ({"worker": {"queue_size": 3}}, "unknown key"),
    ({"sinks": {}}, "unknown section"),
])
def test_bad_rig_config_is_a_clear_error(tmp_path, content, message):
    from spikereveal.errors import SpikeRevealError

    rig = tmp_path / "rig.json"
    rig.write_text(json.dumps(content))
    with pytest.raises(SpikeRevealError, match=message):
        load_serve_config(rig, spike_endpoint="tcp://a:1", rgb_endpoint="tcp://a:2", output_endpoint="tcp://*:3")


def test_serve_command_registers_without_importing_zmq():
    import subprocess
    import sys

    code = ("import argparse, sys\n"
            "from spikereveal.commands import serve, worker, demo\n"
            "p = argparse.ArgumentParser(); s = p.add_subparsers()\n"
            "serve.register(s); worker.register(s); demo.register(s)\n"
            "p.parse_args(['serve', '--spike-endpoint', 'a', '--rgb-endpoint', 'b', '--output-endpoint', 'c'])\n"
            "bad = [m for m in ('zmq', 'torch', 'onnxruntime', 'numba') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_serve_with_worker_processes_matches_deblur(recording, deblurred, tmp_path):
    deblur_out, _, onnx = deblurred
    config = _serve_config(tmp_path, onnx, scale_out={"workers": 2})
    counters, _ = replay_into_serve(recording, config, speed=5.0)
    _compare_with_deblur(deblur_out, tmp_path / "serve")
    assert counters["exposures_done"] == EXPOSURES - 1 and counters["worker_lost"] == 0


# -- policies with a fake runner (no model): exit-after, stop, and slow inference ---------------------------------
class GatedRunnerFactory:
    """Runners whose inferences wait for ``gate`` (set by the test) and output the blurry frame."""

    def __init__(self, gate: threading.Event | None = None):
        self.gate = gate

    def __call__(self, shape):
        from spikereveal.engines.runners import Runner, RunnerOptions

        gate = self.gate

        class Gated(Runner):
            name = "gated"

            def _load(self):
                self.sharp = np.empty(self.shape.sharp, np.uint8)

            def _infer(self, image, spikes, out):
                if gate is not None:
                    assert gate.wait(60)
                target = self.sharp if out is None else out
                np.copyto(target, image)
                return target

        return Gated(shape, options=RunnerOptions(warmup_runs=0))


def _accounted(counters):
    return sum(counters[k] for k in ("exposures_done", "exposures_skipped", "exposures_dropped",
                                     "exposures_pending_at_exit", "exposures_abandoned", "exposures_failed"))


def _run_with_factory(recording_path, config, factory, speed=5.0, release=None):
    from spikereveal.recording import open_recording
    from spikereveal.stream.replay import LiveReplay, ReplayConfig
    from spikereveal.stream.serve import Server

    server = Server(config, runner_factory=factory)
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("counters", server.run()))
    thread.start()
    assert server.ready.wait(60)
    replay_config = ReplayConfig(speed=speed, block_frames=8, wait_for_subscribers=True, start_delay_s=0,
                                 subscriber_timeout_s=20, drain_s=0.2, heartbeat_interval_s=0.02)
    with open_recording(recording_path, strict=False) as rec:
        with LiveReplay(rec, config.spike_endpoint, config.rgb_endpoint, replay_config) as replay:
            replay.run()
    if release is not None:
        release.set()
    thread.join(60)
    assert not thread.is_alive()
    return out["counters"]


def test_slow_inference_drops_the_oldest_and_every_exposure_is_accounted_for(recording, tmp_path):
    gate = threading.Event()  # inference blocks until the whole recording has been replayed
    config = _serve_config(tmp_path, "unused.onnx", worker={"save_dir": None, "queue_capacity_jobs": 1})
    counters = _run_with_factory(recording, config, GatedRunnerFactory(gate), speed=5.0, release=gate)
    complete = EXPOSURES - 1
    assert counters["windows_ready"] == complete
    # one exposure in inference, one waiting, the rest dropped while inference was stuck
    assert counters["exposures_done"] == 2 and counters["job_queue_dropped"] == complete - 2
    assert counters["exposures_dropped"] == counters["job_queue_dropped"]
    assert counters["job_queue_max_depth"] == 1
    assert _accounted(counters) == counters["exposures_received"] == EXPOSURES


def test_exit_after_stops_once_enough_exposures_are_published(recording, tmp_path):
    config = _serve_config(tmp_path, "unused.onnx", worker={"save_dir": str(tmp_path / "out")})
    config = dataclasses.replace(config, exit_after_exposures=2, idle_timeout_s=10.0)  # idle: a safety net
    counters = _run_with_factory(recording, config, GatedRunnerFactory(), speed=1.0)
    assert counters["stop_reason"] == "exit_after"
    assert counters["exposures_done"] >= 2
    assert _accounted(counters) == counters["exposures_received"]
    _, rows = _rows(tmp_path / "out")
    assert len(rows) == K * counters["exposures_done"]


def test_stop_event_ends_serve_and_abandons_queued_exposures(recording, tmp_path):
    from spikereveal.recording import open_recording
    from spikereveal.stream.replay import LiveReplay, ReplayConfig
    from spikereveal.stream.serve import Server

    gate = threading.Event()
    config = _serve_config(tmp_path, "unused.onnx", worker={"save_dir": None, "queue_capacity_jobs": 8})
    server = Server(config, runner_factory=GatedRunnerFactory(gate))
    stop = threading.Event()
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("counters", server.run(stop)))
    thread.start()
    assert server.ready.wait(60)
    replay_config = ReplayConfig(speed=5.0, block_frames=8, wait_for_subscribers=True, start_delay_s=0,
                                 subscriber_timeout_s=20, drain_s=0.2, heartbeat_interval_s=0.02)
    with open_recording(recording, strict=False) as rec:
        with LiveReplay(rec, config.spike_endpoint, config.rgb_endpoint, replay_config) as replay:
            replay.run()
    stop.set()  # inference is still stuck on the first exposure: the rest are abandoned, not waited for
    assert server.stopping.wait(30)
    gate.set()
    thread.join(60)
    counters = out["counters"]
    assert counters["stop_reason"] == "stopped"
    assert counters["exposures_done"] == 1 and counters["exposures_abandoned"] == EXPOSURES - 2
    assert _accounted(counters) == counters["exposures_received"]


def test_cli_serve_end_to_end_with_idle_timeout(recording, deblurred, tmp_path, capsys):
    import argparse

    from spikereveal.commands import serve as command
    from spikereveal.recording import open_recording
    from spikereveal.stream.replay import LiveReplay, ReplayConfig

    deblur_out, _, onnx = deblurred
    spike, rgb, output = _endpoints()
    replay_config = ReplayConfig(speed=5.0, block_frames=8, wait_for_subscribers=True, start_delay_s=0,
                                 subscriber_timeout_s=60, drain_s=0.2, heartbeat_interval_s=0.02)
    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--spike-endpoint", spike, "--rgb-endpoint", rgb, "--output-endpoint", output,
                              "--onnx", str(onnx), "--k", str(K), "--spike-geometry", f"{SPIKE_H}x{SPIKE_W}",
                              "--save", str(tmp_path / "serve"), "--queue", "8", "--idle-timeout", "1",
                              "--stats-json", str(tmp_path / "stats.json"), "--threads", "1"])
    with open_recording(recording, strict=False) as rec:
        with LiveReplay(rec, spike, rgb, replay_config) as replay:  # binds now, streams once serve subscribes
            publisher = threading.Thread(target=replay.run)
            publisher.start()
            assert args.func(args) == 0  # the main thread: serve installs its signal handlers
            publisher.join(30)
    printed = capsys.readouterr().out
    assert "exposures_done=4" in printed and "idle_timeout" in printed
    assert json.loads((tmp_path / "stats.json").read_text())["exposures_done"] == EXPOSURES - 1
    _compare_with_deblur(deblur_out, tmp_path / "serve")


def test_remote_worker_over_tcp_matches_deblur(recording, deblurred, tmp_path):
    from spikereveal.engines.choice import runner_factory
    from spikereveal.stream.config import EngineConfig
    from spikereveal.stream.worker import run_worker

    deblur_out, _, onnx = deblurred
    jobs, results = free_tcp_endpoints(2)  # free ports, released again for serve to bind
    config = _serve_config(tmp_path, onnx, scale_out={"job_endpoint": jobs, "result_endpoint": results,
                                                      "remote_workers": 1})
    stop = threading.Event()
    worker_out = {}
    factory = runner_factory(EngineConfig(engine="ort", onnx=str(onnx), threads=1).choice(), tmp_path / "w")
    worker = threading.Thread(target=lambda: worker_out.setdefault("stats", run_worker(
        jobs, results, factory, worker_id=3, spike_shape=(SPIKE_H, SPIKE_W), k=K, stop=stop)))
    worker.start()
    try:
        counters, _ = replay_into_serve(recording, config, speed=1.0)
    finally:
        stop.set()
        worker.join(30)
    assert worker_out["stats"].jobs == EXPOSURES - 1 and worker_out["stats"].malformed == 0
    assert counters["exposures_done"] == EXPOSURES - 1 and counters["worker_lost"] == 0
    _compare_with_deblur(deblur_out, tmp_path / "serve")


def test_calibrated_clock_offset_from_the_rig_config_matches_deblur(tmp_path, checkpoint):
    from spikereveal.calibration.clock import ClockCalibration
    from spikereveal.calibration.store import RigCalibration, write_calibration

    offset_ns = 3_000_000  # RGB clock = spike clock + 3 ms: windows move 3 frames earlier
    rec = make_recording(tmp_path / "rec", exposures=4, seed=8)
    clock = ClockCalibration(offset_ns=offset_ns, drift_ppm=0.0, residual_ns=0.0, exposures=4, reference_ns=0)
    write_calibration(RigCalibration((SPIKE_H, SPIKE_W), (4 * SPIKE_H, 4 * SPIKE_W), clock=clock), rec)
    deblur_out = tmp_path / "deblur"
    summary = deblur(rec, deblur_out, EngineChoice(engine="ort", model=str(checkpoint)),
                     DeblurConfig(k=K, write_video=False))
    assert summary["exposures_processed"] == 3  # the first window now starts before the first frame
    onnx = next((deblur_out / "onnx").glob("*.onnx"))
    spike, rgb, output = _endpoints()
    rig = tmp_path / "rig.json"
    rig.write_text(json.dumps({
        "endpoints": {"spike": spike, "rgb": rgb, "output": output},
        "geometry": {"spike_height": SPIKE_H, "spike_width": SPIKE_W},
        "sync": {"k": K}, "engine": {"onnx": str(onnx), "threads": 1},
        "worker": {"save_dir": "serve", "queue_capacity_jobs": 8},
        "run": {"idle_timeout_s": 1.0},
        "calibration": "rec/calibration.json",
    }))
    config = load_serve_config(rig)
    counters, _ = replay_into_serve(rec, config, speed=5.0)
    assert counters["exposures_skipped"] == 1 and counters["skipped_by_reason"] == {"stream_start": 1}
    _compare_with_deblur(deblur_out, tmp_path / "serve")


def test_exposures_outside_the_models_gain_range_are_counted(recording, tmp_path, caplog):
    def factory(shape):
        runner = GatedRunnerFactory()(shape)
        runner.firing_gain_range = (2.0, 3.0)  # the recording's random spikes give ~0.5
        return runner

    config = _serve_config(tmp_path, "unused.onnx", worker={"save_dir": None})
    with caplog.at_level("WARNING", logger="spikereveal.stream.worker"):
        counters = _run_with_factory(recording, config, factory, speed=5.0)
    assert counters["exposures_done"] == EXPOSURES - 1
    assert counters["out_of_domain_exposures"] == EXPOSURES - 1
    warnings = [r.getMessage() for r in caplog.records if "trained range" in r.getMessage()]
    assert len(warnings) == 1 and "firing gain 0." in warnings[0]


def test_spike_geometry_mismatch_is_warned_and_counted(recording, tmp_path, caplog, capsys):
    """--spike-geometry 250x400 against a smaller stream: still deblurred, but warned about and counted."""
    from spikereveal.commands.serve import format_counters

    config = dataclasses.replace(_serve_config(tmp_path, "unused.onnx", worker={"save_dir": None}),
                                 spike_height=250, spike_width=400)
    with caplog.at_level("WARNING", logger="spikereveal.stream.graph"):
        counters = _run_with_factory(recording, config, GatedRunnerFactory(), speed=5.0)
    assert counters["exposures_done"] == EXPOSURES - 1  # the engine reloads for the real geometry
    assert counters["spike_geometry_mismatches"] > 0
    assert counters["spike_geometry_declared"] == "250x400"
    assert counters["spike_geometry_seen"] == [f"{SPIKE_H}x{SPIKE_W}"]
    warnings = [r.getMessage() for r in caplog.records if "declared" in r.getMessage()]
    assert len(warnings) == 1 and f"{SPIKE_H}x{SPIKE_W} frames" in warnings[0] and "250x400" in warnings[0]
    written = json.loads((tmp_path / "stats.json").read_text())
    assert written["spike_geometry_mismatches"] == counters["spike_geometry_mismatches"]
    assert "spike_geometry_mismatches=" in format_counters(counters) and "--spike-geometry 250x400" in \
        format_counters(counters)


def test_matching_spike_geometry_counts_no_mismatch(recording, tmp_path):
    config = _serve_config(tmp_path, "unused.onnx", worker={"save_dir": None})
    counters = _run_with_factory(recording, config, GatedRunnerFactory(), speed=5.0)
    assert counters["spike_geometry_mismatches"] == 0 and counters["spike_geometry_seen"] == []


# -- the environment: a full disk, an unexpected error (issue 14 item 5) -------------------------------------------
def _no_space(path, image, params):
    import errno
    import os

    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


def _remote_fake_worker(config, factory, stop):
    """A 'spikereveal worker' in a thread with a fake runner (serve --job-endpoint/--result-endpoint)."""
    from spikereveal.stream.worker import run_worker

    thread = threading.Thread(target=run_worker, args=(config.scale_out.job_endpoint, config.scale_out.result_endpoint,
                                                       factory), kwargs={"worker_id": 7, "stop": stop})
    thread.start()
    return thread


def _worker_endpoints():
    spike, _, _ = _endpoints()
    folder = spike[len("ipc://"):].rsplit("/", 1)[0]
    return {"job_endpoint": f"ipc://{folder}/jobs", "result_endpoint": f"ipc://{folder}/results",
            "remote_workers": 1}


@pytest.mark.parametrize("mode", ["thread", "remote_worker"])
def test_full_disk_under_save_is_counted_logged_once_and_serving_goes_on(recording, tmp_path, monkeypatch, caplog,
                                                                         mode):
    monkeypatch.setattr(cv2, "imwrite", _no_space)  # every PNG write: ENOSPC
    scale_out = _worker_endpoints() if mode == "remote_worker" else {}
    config = _serve_config(tmp_path, "unused.onnx", worker={"save_dir": str(tmp_path / "out")}, scale_out=scale_out)
    stop = threading.Event()
    worker = _remote_fake_worker(config, GatedRunnerFactory(), stop) if scale_out else None
    try:
        with caplog.at_level("ERROR", logger="spikereveal.stream.worker"):
            counters = _run_with_factory(recording, config, GatedRunnerFactory(), speed=5.0)
    finally:
        stop.set()
        if worker is not None:
            worker.join(30)
    done = EXPOSURES - 1
    assert counters["stop_reason"] == "idle_timeout"
    assert counters["exposures_done"] == done and counters["output_messages"] == K * done  # still published
    assert counters["frames_save_failed"] == K * done and counters["frames_saved"] == 0
    assert counters["save_failed_by_kind"] == {"ENOSPC": K * done}
    logged = [r for r in caplog.records if "frames_save_failed" in r.getMessage()]
    assert len(logged) == 1 and "ENOSPC" in logged[0].getMessage()  # once per kind, not per frame
    written = json.loads((tmp_path / "stats.json").read_text())
    assert written["frames_save_failed"] == K * done
    assert _accounted(counters) == counters["exposures_received"]


def test_frame_saver_counts_a_folder_it_cannot_write_and_goes_on(tmp_path, caplog):
    from spikereveal.stream.sinks import FrameSaver

    saver = FrameSaver(tmp_path / "out")
    shutil.rmtree(tmp_path / "out" / "frames")
    (tmp_path / "out" / "frames").write_text("a file where the folder was")  # root ignores read-only modes
    sharp = np.zeros((K, 8, 8, 3), np.uint8)
    with caplog.at_level("ERROR", logger="spikereveal.stream.worker"):
        for exposure in range(3):
            saver.save(exposure, np.arange(K), sharp)
    saver.close()
    assert saver.frames_failed == 3 * K and saver.frames_written == 0 and saver.failure_kinds == {"imwrite": 3 * K}
    assert len([r for r in caplog.records if "frames_save_failed" in r.getMessage()]) == 1
    assert _rows(tmp_path / "out")[1] == []  # no row for a frame that is not on disk


@pytest.mark.parametrize("distributed", [False, True])
def test_stats_json_is_written_when_the_loop_dies_of_an_unexpected_error(tmp_path, monkeypatch, distributed):
    from spikereveal.stream.graph import Pipeline
    from spikereveal.stream.serve import Server

    def broken_tick(self, now_ns):
        raise RuntimeError("boom")

    monkeypatch.setattr(Pipeline, "tick", broken_tick)
    scale_out = _worker_endpoints() if distributed else {}
    config = _serve_config(tmp_path, "unused.onnx", worker={"save_dir": None}, scale_out=scale_out)
    with pytest.raises(RuntimeError, match="boom"):
        Server(config, runner_factory=GatedRunnerFactory()).run()
    written = json.loads((tmp_path / "stats.json").read_text())
    assert written["stop_reason"] == "error" and written["exposures_received"] == 0


# -- lost workers (issue 14 item 6) ----------------------------------------------------------------------------------
class _FakeProcess:
    def __init__(self):
        self.sentinel, self._write = os.pipe()  # readable once "the process" exits, like multiprocessing's
        self.exitcode = None

    def is_alive(self):
        return self.exitcode is None

    def die(self, code):
        self.exitcode = code
        os.write(self._write, b"x")


def test_an_exited_local_worker_is_lost_at_once_and_serve_stops_when_none_is_left(tmp_path):
    from spikereveal.stream.collector import ResultCollector
    from spikereveal.stream.serve import Server
    from test_worker import make_job

    config = _serve_config(tmp_path, "unused.onnx", worker={"save_dir": None}, scale_out={"workers": 2})
    server = Server(config)
    processes = {0: _FakeProcess(), 1: _FakeProcess()}
    server._local_workers = dict(processes)
    poller = zmq.Poller()
    for process in processes.values():
        poller.register(process.sentinel, zmq.POLLIN)
    collector = ResultCollector(result_timeout_ns=30 * 10**9)  # the 30 s timeout must not be needed
    for worker in (0, 1):
        collector.heard(worker, 0)
        collector.dispatched(make_job(worker), 0, worker, b"w%d" % worker)
        collector.taken(worker, (0, worker), 0)
    try:
        processes[0].die(-9)
        assert [socket for socket, _ in poller.poll(0)] == [processes[0].sentinel]  # the loop wakes at once
        assert server._check_workers(collector, poller)
        assert collector.lost == 1 and collector.lost_workers == [0] and collector.held(b"w0") == 0
        assert poller.poll(0) == []  # its sentinel is no longer watched
        processes[1].die(1)
        assert not server._check_workers(collector, poller)
        assert "all 2 worker processes exited" in server._fatal and collector.in_flight == 0
    finally:
        for process in processes.values():
            os.close(process.sentinel)
            os.close(process._write)


def test_an_exited_local_worker_is_replaced_unless_it_failed_for_good_or_crash_loops(tmp_path):
    """Issue 14.6 with restarts: a killed worker gets a successor under a new id (stale beats of the dead one
    never count for it); exit code 2 (an error it would repeat) and an early exit are not restarted."""
    import time

    from spikereveal.stream.collector import ResultCollector
    from spikereveal.stream.serve import Server
    from test_worker import make_job

    config = _serve_config(tmp_path, "unused.onnx", worker={"save_dir": None},
                           scale_out={"workers": 2, "worker_crash_loop_s": 5.0})
    server = Server(config)
    spawned: list = []

    def spawn(worker_id):
        process = _FakeProcess()
        spawned.append((worker_id, process))
        return process

    processes = {0: _FakeProcess(), 1: _FakeProcess()}
    server._local_workers, server._spawn_worker, server._next_worker_id = dict(processes), spawn, 2
    long_ago = time.monotonic() - 60
    server._started_at = {0: long_ago, 1: long_ago}
    poller = zmq.Poller()
    for process in processes.values():
        poller.register(process.sentinel, zmq.POLLIN)
    collector = ResultCollector(result_timeout_ns=30 * 10**9)
    for worker in (0, 1):
        collector.heard(worker, 0)
        collector.dispatched(make_job(worker), 0, worker, b"w%d" % worker)
        collector.taken(worker, (0, worker), 0)
    try:
        processes[0].die(-9)  # killed after a minute of work: replaced
        assert server._check_workers(collector, poller)
        assert [w for w, _ in spawned] == [2] and server.workers_restarted == 1
        assert collector.lost == 1 and 2 in collector.last_heard
        assert sorted(server._local_workers) == [1, 2]
        collector.heard(0, 1)  # a late beat of the dead worker does not revive it
        assert 0 not in collector.last_heard
        spawned[0][1].die(-9)  # the successor dies within worker_crash_loop_s: a crash loop, not restarted
        assert server._check_workers(collector, poller)
        assert len(spawned) == 1 and sorted(server._local_workers) == [1]
        processes[1].die(2)  # exit code 2: it reported an error it would repeat
        assert not server._check_workers(collector, poller) and len(spawned) == 1
    finally:
        for process in [*processes.values(), *(p for _, p in spawned)]:
            os.close(process.sentinel)
            os.close(process._write)


def test_a_silent_remote_worker_is_declared_lost_by_the_serve_loop(tmp_path):
    import logging

    from spikereveal.stream.serve import Server
    from spikereveal.stream.wire import JOB_VERSION, decode_welcome, encode_ready

    endpoints = _worker_endpoints()
    config = _serve_config(tmp_path, "unused.onnx", worker={"save_dir": None},
                           scale_out={**endpoints, "heartbeat_timeout_s": 0.2})
    config = dataclasses.replace(config, idle_timeout_s=None)
    lost = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record):
            if "worker 9 lost" in record.getMessage() and "no heartbeat" in record.getMessage():
                lost.set()

    handler = Watch()
    logging.getLogger("spikereveal.stream.collector").addHandler(handler)
    server, stop, out = Server(config, runner_factory=GatedRunnerFactory()), threading.Event(), {}
    thread = threading.Thread(target=lambda: out.setdefault("counters", server.run(stop)))
    thread.start()
    context = zmq.Context()
    jobs = context.socket(zmq.DEALER)
    try:
        assert server.ready.wait(30)
        jobs.connect(endpoints["job_endpoint"])
        jobs.send_multipart(encode_ready(9))  # then silence
        assert jobs.poll(10_000) and decode_welcome(jobs.recv_multipart()) == (JOB_VERSION, 1)
        assert lost.wait(10)
    finally:
        stop.set()
        thread.join(30)
        jobs.close(linger=0)
        context.term()
        logging.getLogger("spikereveal.stream.collector").removeHandler(handler)
    assert out["counters"]["stop_reason"] == "stopped"


def test_cli_worker_timeouts_build_the_config():
    import argparse

    from spikereveal.commands import serve as command

    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--spike-endpoint", "tcp://a:1", "--rgb-endpoint", "tcp://a:2",
                              "--output-endpoint", "tcp://*:3", "--workers", "2", "--result-timeout", "5",
                              "--heartbeat-timeout", "2.5"])
    config = command.config_from_args(args)
    assert config.scale_out.result_timeout_s == 5.0 and config.scale_out.heartbeat_timeout_s == 2.5
    with pytest.raises(Exception, match="heartbeat_timeout_s"):
        load_serve_config(None, spike_endpoint="tcp://a:1", rgb_endpoint="tcp://a:2", output_endpoint="tcp://*:3",
                          scale_out={"heartbeat_timeout_s": 0})


# -- the engine's warm-up and load failures (issue 14 items 7 and 8) -----------------------------------------------
class CountingFactory(GatedRunnerFactory):
    """GatedRunnerFactory whose loads wait for ``load_gate`` (a slow engine start) or fail with ``load_error``."""

    def __init__(self, load_gate=None, load_error=None):
        super().__init__()
        self.load_gate, self.load_error, self.calls = load_gate, load_error, 0

    def __call__(self, shape):
        self.calls += 1
        runner = super().__call__(shape)
        gate, error, load = self.load_gate, self.load_error, runner._load

        def slow_load():
            if error is not None:
                raise error
            if gate is not None:
                assert gate.wait(60)
            load()

        runner._load = slow_load
        return runner


def test_a_slow_engine_start_without_spike_geometry_drops_nothing_for_capacity(recording, tmp_path):
    loaded = threading.Event()  # the engine finishes loading only once the whole recording was sent
    config = _serve_config(tmp_path, "unused.onnx", worker={"save_dir": None, "queue_capacity_jobs": 1})
    config = dataclasses.replace(config, spike_height=None, spike_width=None)
    factory = CountingFactory(load_gate=loaded)
    counters = _run_with_factory(recording, config, factory, speed=5.0, release=loaded)
    assert factory.calls == 1  # loaded at the first spike block, once
    assert counters["exposures_done"] == EXPOSURES - 1  # the exposures waited for the engine
    assert counters["job_queue_dropped"] == counters["warmup_dropped"] == counters["exposures_dropped"] == 0
    assert _accounted(counters) == counters["exposures_received"]


def test_an_engine_that_fails_to_load_stops_serve_once_with_the_reason(recording, tmp_path):
    from spikereveal.engines.runners import RunnerError
    from spikereveal.errors import SpikeRevealError
    from spikereveal.recording import open_recording
    from spikereveal.stream.replay import LiveReplay, ReplayConfig
    from spikereveal.stream.serve import Server

    config = _serve_config(tmp_path, "unused.onnx", worker={"save_dir": None})
    config = dataclasses.replace(config, spike_height=None, spike_width=None, idle_timeout_s=30.0)
    factory = CountingFactory(load_error=RunnerError("not an LDN graph"))
    server, out = Server(config, runner_factory=factory), {}

    def run():
        try:
            server.run()
        except SpikeRevealError as exc:
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    assert server.ready.wait(60)
    replay_config = ReplayConfig(speed=5.0, block_frames=8, wait_for_subscribers=True, start_delay_s=0,
                                 subscriber_timeout_s=20, drain_s=0.2, heartbeat_interval_s=0.02)
    with open_recording(recording, strict=False) as rec:
        with LiveReplay(rec, config.spike_endpoint, config.rgb_endpoint, replay_config) as replay:
            replay.run()
    thread.join(60)
    assert not thread.is_alive()
    assert "could not be loaded" in str(out["error"]) and "not an LDN graph" in str(out["error"])
    assert factory.calls == 1  # not once per exposure
    written = json.loads((tmp_path / "stats.json").read_text())
    assert written["stop_reason"] == "error" and _accounted(written) == written["exposures_received"]


def _not_an_ldn_onnx(path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "other",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph), str(path))
    return path


@pytest.mark.parametrize("kind", ["onnx", "model"])
def test_serve_refuses_a_model_file_that_is_not_the_ldn_at_start(tmp_path, capsys, kind):
    from spikereveal.cli import main

    if kind == "onnx":
        source = ["--onnx", str(_not_an_ldn_onnx(tmp_path / "other.onnx"))]
    else:
        (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
        source = ["--model", str(tmp_path / "random.pt")]
    spike, rgb, output = _endpoints()
    code = main(["serve", "--spike-endpoint", spike, "--rgb-endpoint", rgb, "--output-endpoint", output, *source,
                 "--idle-timeout", "30"])  # no --spike-geometry: it used to wait for exposures, then exit 0
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert ("not a spikereveal LDN export" in err and "spikereveal export" in err) if kind == "onnx" else \
        "random.pt" in err
