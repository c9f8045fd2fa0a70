"""``spikereveal bench soak``: serve under a hostile, restarting, worker-killing rig; every frame checked.

What runs (all on this host, ipc:// endpoints in a private temporary folder):

* two simulated recordings A and B (different scenes), each deblurred offline first (``deblur``, ONNX
  Runtime, one thread): the reference frames;
* ``spikereveal serve`` as a child process (the real CLI, ``--workers N`` local worker processes on that
  same ONNX file, ``--save``, ``--stats-json``), so its memory and exit status are its own;
* a rig publisher in this process that replays A, then B, then A ... looping each at ``speed`` x real time
  and restarting into the other recording every ``restart_every_s`` (new stream ids, frame ids from 0, as a
  rig or ``replay`` started again), and after every ``fuzz_every_messages`` genuine messages sends a mutated
  copy of one (bit flips in the header or payload, truncation, garbage, a forged sequence number far ahead
  or back to 0, forged heartbeats): hostile input that must be counted, never shown;
* every ``kill_worker_every_s`` one of serve's worker processes is killed (SIGKILL);
* a viewer subscribed to serve's output compares every sharp frame with the offline frame of the same
  exposure (of A or of B: the ids repeat across restarts) and counts frames that equal neither.

Checks (``checks`` in the report; ``passed`` is their conjunction; the CLI exits 1 when one fails): no
published frame differs from offline (``frames_wrong`` = 0 and every frame was matched), serve exited 0
and wrote its counters, the counters add up (received = done + skipped + dropped + failed + abandoned +
pending at exit), frames.csv rows = saved files = ``frames_saved``, serve's peak resident memory
(sampled every 0.2 s, of its own process; workers are separate processes) stayed under its stated bound
(its RSS once serving + :meth:`ServeConfig.queued_bytes_bound`, unless ``rss_bound_bytes`` is given),
serve's own ``peak_queued_bytes`` stayed under that queue bound, and something was actually exercised
(frames published, restarts and worker kills done, killed workers replaced, mutated messages counted as
malformed).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from spikereveal.errors import ConfigError, SpikeRevealError
from spikereveal.kernels.timing import DEFAULT_K

__all__ = ["SoakConfig", "run_soak", "format_soak", "FrameChecker", "stated_queue_bound_bytes"]

logger = logging.getLogger(__name__)

_SAMPLE_S = 0.2


@dataclass(frozen=True)
class SoakConfig:
    duration_s: float = 600.0
    speed: float = 2.0  # x real time
    restart_every_s: float = 30.0  # the publisher restarts into the other recording
    kill_worker_every_s: float = 60.0  # one worker process SIGKILLed (0: never)
    workers: int = 2
    fuzz_every_messages: int = 25  # a mutated copy after every N genuine messages (0: none)
    preset: str = "tiny"
    exposures: int = 12  # per recording
    k: int = DEFAULT_K
    seed: int = 0
    # serve's resident-memory bound; None: its RSS once it is serving plus the byte bound of its queues as
    # stated in stream/config.py (stated_queue_bound_bytes)
    rss_bound_bytes: int | None = None
    model: str | None = None  # LDN checkpoint (default: the shipped model)

    def __post_init__(self):
        for name in ("duration_s", "speed", "restart_every_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"soak {name} must be positive, got {getattr(self, name)!r}")
        if self.rss_bound_bytes is not None and not self.rss_bound_bytes > 0:
            raise ConfigError(f"soak rss_bound_bytes must be positive, got {self.rss_bound_bytes!r}")
        if self.kill_worker_every_s < 0 or self.fuzz_every_messages < 0:
            raise ConfigError("soak kill_worker_every_s and fuzz_every_messages must be >= 0")
        if self.workers < 1 or self.exposures < 3 or self.k < 1:
            raise ConfigError("soak needs workers >= 1, exposures >= 3 and k >= 1")


def stated_queue_bound_bytes() -> int:
    """The byte bound of serve's queues with the configuration the soak runs (serve's defaults)."""
    from spikereveal.stream.config import ServeConfig

    return ServeConfig("ipc://s", "ipc://r", "ipc://o").queued_bytes_bound


# -- the references ----------------------------------------------------------------------------------------------
def _simulate_and_deblur(config: SoakConfig, work: Path, progress) -> tuple[list[Path], Path, list[dict]]:
    import cv2

    from spikereveal.engines.choice import EngineChoice
    from spikereveal.stream.offline import DeblurConfig, deblur
    from spikereveal.engines.runners import RunnerOptions
    from spikereveal.sim.config import preset
    from spikereveal.sim.simulate import simulate_recording

    recordings, references, onnx = [], [], None
    if config.model is None:
        from spikereveal.engines.export import default_onnx_path

        onnx = default_onnx_path()  # the shipped export, as deblur and serve use by default
    for i, scenes in enumerate(("default", "deadleaves")):
        progress(f"simulating recording {'AB'[i]}")
        path = simulate_recording(preset(config.preset), work / f"rec_{'ab'[i]}", seed=config.seed + i,
                                  exposures=config.exposures, scenes=None if scenes == "default" else scenes)
        progress(f"deblurring recording {'AB'[i]} offline (the reference)")
        out = work / f"offline_{'ab'[i]}"
        choice = EngineChoice(engine="ort", model=config.model, onnx_path=None if onnx is None else str(onnx),
                              options=RunnerOptions(threads=1))
        deblur(path, out, choice, DeblurConfig(k=config.k, write_video=False))
        if onnx is None:
            onnx = next((out / "onnx").glob("*.onnx"))
        frames = {}
        with open(out / "frames.csv", newline="") as handle:
            for row in list(csv.reader(handle))[1:]:
                frames[(int(row[0]), int(Path(row[2]).stem.split("_")[-1]))] = cv2.imread(str(out / row[2]))
        recordings.append(path)
        references.append(frames)
    return recordings, onnx, references


# -- the hostile rig ---------------------------------------------------------------------------------------------
class _Fuzzer:
    """Mutated copies of genuine messages, sent after them (a copy never precedes its original)."""

    def __init__(self, seed: int, every: int):
        self.rng = random.Random(seed)
        self.every = every
        self.count = 0
        self.sent = 0

    def mutate(self, parts: list) -> list:
        from spikereveal.stream.protocol import _COMMON

        parts = [bytearray(bytes(getattr(p, "buffer", p))) for p in parts]
        rng, kind = self.rng, self.rng.randrange(6)
        header = parts[1] if len(parts) > 1 else parts[0]
        if kind == 0 and header:  # one flipped bit in the header
            i = rng.randrange(len(header))
            header[i] ^= 1 << rng.randrange(8)
        elif kind == 1 and len(parts) > 2 and parts[2]:  # flipped bytes in the payload
            for _ in range(4):
                i = rng.randrange(len(parts[2]))
                parts[2][i] ^= 0xFF
        elif kind == 2:  # truncated
            parts = parts[:-1] if rng.random() < 0.5 else [p[: len(p) // 2] for p in parts]
        elif kind == 3:  # garbage
            parts = [bytearray(rng.randbytes(rng.randrange(1, 64))) for _ in range(rng.randrange(1, 4))]
        elif len(header) >= _COMMON.size:  # a forged sequence number: far ahead, or back to 0
            fields = list(_COMMON.unpack_from(header))
            fields[4] = rng.choice((10**18, 0, fields[4] + (1 << 40)))
            header[: _COMMON.size] = _COMMON.pack(*fields)
        return [bytes(p) for p in parts]

    def wrap(self, send: Callable[[list], bool]) -> Callable[[list], bool]:
        if self.every <= 0:
            return send

        def fuzzed(parts) -> bool:
            ok = send(parts)
            self.count += 1
            if self.count % self.every == 0:
                send(self.mutate(parts))
                self.sent += 1
            return ok

        return fuzzed


def _forged_heartbeats(send_spike, send_rgb, rng: random.Random) -> int:
    from spikereveal.stream.protocol import Heartbeat, Kind, encode

    sent = 0
    for send, kind in ((send_spike, Kind.SPIKE_BLOCK), (send_rgb, Kind.RGB_EXPOSURE)):
        send(encode(Heartbeat(stream_id=rng.randrange(2**32), stream_kind=kind, last_seq=10**18,
                              position=10**17, clock_ns=0)))
        sent += 1
    return sent


# -- watching serve -----------------------------------------------------------------------------------------------
class FrameChecker:
    """Compares sharp frames with the offline references of recordings A and B (pure; the viewer feeds it)."""

    def __init__(self, references: list[dict], periods: list[int]):
        self.references = references
        self.periods = periods  # a looped replay shifts exposure ids by the recording's exposure count per pass
        self.frames = self.matched = self.identical = self.wrong = 0
        self.wrong_examples: list[dict] = []

    def check(self, frame) -> bool:
        """True when ``frame`` (a SharpFrame) is the offline frame of its exposure in A or B."""
        self.frames += 1
        best = None
        for name, reference, period in zip("AB", self.references, self.periods):
            expected = reference.get((frame.exposure_id % period, frame.k))
            if expected is None or expected.shape != frame.image.shape:
                continue
            worst = int(np.abs(expected.astype(np.int16) - frame.image.astype(np.int16)).max())
            if best is None or worst < best[1]:
                best = (name, worst)
        if best is not None and best[1] <= 1:  # one gray level: thread-count rounding, never a wrong frame
            self.matched += 1
            self.identical += best[1] == 0
            return True
        self.wrong += 1
        if len(self.wrong_examples) < 5:
            self.wrong_examples.append({"exposure_id": frame.exposure_id, "k": frame.k,
                                        "closest": None if best is None else best[0],
                                        "max_abs_difference": None if best is None else best[1]})
        return False


class _Viewer(threading.Thread):
    """Subscribes to serve's output and hands every sharp frame to a FrameChecker."""

    def __init__(self, endpoint: str, checker: FrameChecker):
        super().__init__(daemon=True)
        import zmq

        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, 100_000)
        self.socket.setsockopt(zmq.SUBSCRIBE, b"")
        self.socket.connect(endpoint)
        self.checker = checker
        self.malformed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        import zmq

        from spikereveal.stream.protocol import ProtocolError, SharpFrame, decode

        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        while not self.stop.is_set():
            if not poller.poll(100):
                continue
            try:
                frame = decode(self.socket.recv_multipart())
            except ProtocolError:
                self.malformed += 1
                continue
            if isinstance(frame, SharpFrame):
                self.checker.check(frame)
            else:
                self.malformed += 1

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        self.socket.close(linger=0)
        self.context.term()


def _rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                out += [int(p) for p in handle.read().split()]
    except OSError:
        pass
    return out


def _worker_pids(serve_pid: int) -> list[int]:
    """serve's worker processes (spawned interpreters; the multiprocessing resource tracker is not one)."""
    pids = []
    for pid in _children(serve_pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if b"resource_tracker" not in cmdline:
            pids.append(pid)
    return pids


# -- the run -------------------------------------------------------------------------------------------------------
def run_soak(config: SoakConfig, out_dir: str | os.PathLike,
             progress: Callable[[str], None] | None = None) -> dict:
    """Run the soak (module doc); returns the report (also written to ``out_dir/soak.json``)."""
    from spikereveal.recording import open_recording
    from spikereveal.stream.replay import ReplayConfig, Replayer
    from spikereveal.stream.transport import RigSockets

    progress = progress or (lambda status: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sr-soak-", dir="/tmp") as tmp:
        work = Path(tmp)
        recording_paths, onnx, references = _simulate_and_deblur(config, work, progress)
        recordings = [open_recording(p) for p in recording_paths]
        spike = recordings[0].meta.spike
        spike_ep, rgb_ep, out_ep = (f"ipc://{tmp}/{name}" for name in ("s", "r", "o"))
        stats_path, save_dir = out_dir / "serve_counters.json", out_dir / "serve_frames"
        if stats_path.exists():  # the soak's own outputs of an earlier run in the same folder
            stats_path.unlink()
        if save_dir.exists():
            shutil.rmtree(save_dir)
        command = [sys.executable, "-m", "spikereveal", "serve", "--spike-endpoint", spike_ep, "--rgb-endpoint",
                   rgb_ep, "--output-endpoint", out_ep, "--spike-geometry", f"{spike.height}x{spike.width}",
                   "--onnx", str(onnx), "--threads", "1", "--workers", str(config.workers), "--k", str(config.k),
                   "--save", str(save_dir), "--stats-json", str(stats_path), "--idle-timeout", "5"]
        fuzzer = _Fuzzer(config.seed, config.fuzz_every_messages)
        rng = random.Random(config.seed + 1)
        report = {"config": asdict(config), "command": " ".join(command[1:])}
        with RigSockets(spike_ep, rgb_ep) as sockets:
            progress("starting serve (engine load and warm-up)")
            log_path = out_dir / "serve.log"
            with open(log_path, "w") as log:
                serve = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            checker = FrameChecker(references, [len(r.exposures) for r in recordings])
            viewer = _Viewer(out_ep, checker)
            viewer.start()
            rss_peak, sampling = [0], threading.Event()
            baseline = bound = 0

            def sample() -> None:
                while not sampling.is_set():
                    rss = _rss_bytes(serve.pid)
                    if rss is not None:
                        rss_peak[0] = max(rss_peak[0], rss)
                    sampling.wait(_SAMPLE_S)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                if not sockets.wait_for_subscribers(120.0):
                    raise SpikeRevealError(f"serve did not subscribe within 120 s; see {log_path}")
                time.sleep(1.0)  # the output viewer's subscription
                baseline = _rss_bytes(serve.pid) or 0  # serving, nothing queued yet
                bound = config.rss_bound_bytes or baseline + stated_queue_bound_bytes()
                restarts, kills, heartbeats = 0, 0, 0
                start = time.monotonic()
                next_kill = start + config.kill_worker_every_s if config.kill_worker_every_s else float("inf")
                segment = 0
                send_spike, send_rgb = fuzzer.wrap(sockets.send_spike), fuzzer.wrap(sockets.send_rgb)
                while time.monotonic() - start < config.duration_s and serve.poll() is None:
                    recording = recordings[segment % 2]
                    stop = threading.Event()
                    replay = Replayer(recording, ReplayConfig(speed=config.speed, loops=None, block_frames=16,
                                                              start_delay_s=0.0, drain_s=0.0),
                                      send_spike, send_rgb, stop=stop, poll_sockets=sockets.poll)
                    left = config.duration_s - (time.monotonic() - start)
                    timer = threading.Timer(min(config.restart_every_s, max(left, 0.0)), stop.set)
                    timer.start()
                    progress(f"{time.monotonic() - start:5.0f} s: replaying {'AB'[segment % 2]} (restart "
                             f"{segment}); {checker.frames} frames checked, {checker.wrong} wrong")
                    killer_stop = threading.Event()

                    def killer() -> None:
                        nonlocal kills, next_kill
                        while not killer_stop.wait(0.2):
                            if time.monotonic() >= next_kill:
                                pids = _worker_pids(serve.pid)
                                if pids:
                                    os.kill(rng.choice(pids), signal.SIGKILL)
                                    kills += 1
                                next_kill += config.kill_worker_every_s

                    killing = threading.Thread(target=killer, daemon=True)
                    killing.start()
                    try:
                        replay.run()
                    finally:
                        timer.cancel()
                        killer_stop.set()
                        killing.join()
                    if fuzzer.every:
                        heartbeats += _forged_heartbeats(sockets.send_spike, sockets.send_rgb, rng)
                    segment += 1
                    restarts += 1
                progress("stream ended; waiting for serve to finish its queue (idle timeout)")
                try:
                    code = serve.wait(120)
                except subprocess.TimeoutExpired:
                    serve.send_signal(signal.SIGINT)
                    code = serve.wait(30)
            finally:
                if serve.poll() is None:
                    serve.kill()
                    serve.wait()
                sampling.set()
                sampler.join()
                time.sleep(0.5)
                viewer.close()
        report.update(_results(config, code, stats_path, save_dir, checker, fuzzer, heartbeats, restarts - 1, kills,
                               rss_peak[0], baseline, bound, time.monotonic() - start))
    (out_dir / "soak.json").write_text(json.dumps(report, indent=2))
    return report


def _results(config, code, stats_path, save_dir, viewer: FrameChecker, fuzzer, heartbeats, restarts, kills, rss_peak,
             rss_baseline, rss_bound, wall_s) -> dict:
    counters = json.loads(stats_path.read_text()) if stats_path.exists() else None
    drop_kinds = ("exposures_done", "exposures_skipped", "exposures_dropped", "exposures_failed",
                  "exposures_abandoned", "exposures_pending_at_exit")
    rows = files = None
    if (save_dir / "frames.csv").exists():
        with open(save_dir / "frames.csv", newline="") as handle:
            rows = len(list(csv.reader(handle))) - 1
        files = len(list((save_dir / "frames").glob("*.png")))
    accounted = None if counters is None else sum(int(counters.get(k, 0)) for k in drop_kinds)
    checks = {
        "no_wrong_frame": viewer.wrong == 0 and viewer.matched == viewer.frames,
        "serve_exit_0": code == 0,
        "counters_written": counters is not None,
        "counters_add_up": counters is not None and counters["exposures_received"] == accounted,
        "saved_files_match": counters is not None and rows == files == counters.get("frames_saved"),
        "rss_under_bound": 0 < rss_peak <= rss_bound,
        "queued_bytes_under_bound": counters is not None
        and 0 < counters.get("peak_queued_bytes", 0) <= stated_queue_bound_bytes(),
        "exercised": viewer.frames > 0 and restarts >= 1 and (kills >= 1 or not config.kill_worker_every_s
                                                               or config.duration_s < config.kill_worker_every_s)
        and (fuzzer.sent == 0 or (counters is not None and counters.get("malformed", 0) > 0)),
        "killed_workers_replaced": counters is not None and counters.get("workers_restarted", 0) == kills,
    }
    return {
        "passed": all(checks.values()),
        "checks": checks,
        "wall_s": round(wall_s, 1),
        "frames_published_checked": viewer.frames,
        "frames_matching_offline": viewer.matched,
        "frames_bit_identical": viewer.identical,
        "frames_wrong": viewer.wrong,
        "wrong_examples": viewer.wrong_examples,
        "restarts_into_other_recording": restarts,
        "workers_killed": kills,
        "mutated_messages_sent": fuzzer.sent + heartbeats,
        "serve_exit_code": code,
        "serve_peak_rss_bytes": rss_peak,
        "serve_rss_serving_bytes": rss_baseline,
        "rss_bound_bytes": rss_bound,
        "serve_peak_queued_bytes": None if counters is None else counters.get("peak_queued_bytes"),
        "queued_bytes_bound": stated_queue_bound_bytes(),
        "workers_restarted": None if counters is None else counters.get("workers_restarted"),
        "frames_csv_rows": rows,
        "frame_files": files,
        "exposures_accounted": accounted,
        "serve_counters": counters,
    }


def format_soak(report: dict) -> str:
    c = report.get("serve_counters") or {}
    lines = [
        f"soak: {'PASSED' if report['passed'] else 'FAILED'} after {report['wall_s']} s",
        f"  frames checked against offline: {report['frames_published_checked']} "
        f"(matching {report['frames_matching_offline']}, bit-identical {report['frames_bit_identical']}, "
        f"wrong {report['frames_wrong']})",
        f"  restarts into the other recording: {report['restarts_into_other_recording']}, workers killed: "
        f"{report['workers_killed']}, mutated messages sent: {report['mutated_messages_sent']}",
        f"  serve peak RSS {report['serve_peak_rss_bytes'] / 2**20:.0f} MiB (serving {report['serve_rss_serving_bytes'] / 2**20:.0f}"
        f" MiB + queue bound {report['queued_bytes_bound'] / 2**20:.0f} MiB = bound "
        f"{report['rss_bound_bytes'] / 2**20:.0f} MiB), peak queued {(report['serve_peak_queued_bytes'] or 0) / 2**20:.1f}"
        f" MiB, workers restarted {report['workers_restarted']}, exit code {report['serve_exit_code']}",
    ]
    if c:
        lines.append(
            f"  exposures received {c.get('exposures_received')} = done {c.get('exposures_done')} + skipped "
            f"{c.get('exposures_skipped')} + dropped {c.get('exposures_dropped')} + failed {c.get('exposures_failed')}"
            f" + abandoned {c.get('exposures_abandoned')} + pending {c.get('exposures_pending_at_exit')} "
            f"(= {report['exposures_accounted']})")
        lines.append(f"  skipped by reason {c.get('skipped_by_reason')}; malformed {c.get('malformed')} "
                     f"{c.get('malformed_by_reason')}; restarts {c.get('restarts')}")
    failed = [name for name, ok in report["checks"].items() if not ok]
    if failed:
        lines.append("  failed checks: " + ", ".join(failed))
    return "\n".join(lines)
