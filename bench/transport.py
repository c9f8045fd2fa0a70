"""``spikereveal bench transport``: replay -> ingest (decode + synchroniser) over loopback ZeroMQ.

A synthetic spike stream at the ``rsb`` sensor geometry (250x400 by default, 12.5 kB per frame) is
published by the real replay publisher (:class:`spikereveal.stream.replay.LiveReplay`) in blocks of F
frames, paced at a given rate (default 2x the 40 kHz sensor: 80 k frames/s) and unpaced, and received
by the real ingest path (SUB socket, ``recv_multipart(copy=False)``, protocol decode, Synchroniser ring).
Reported per run: frames/s and messages/s actually achieved, loss (frames not received, sequence gaps,
publisher drops at the high-water mark), and per-block latency from the publisher's ``send_time_ns`` to
the end of ingest (same host, monotonic clock; nearest-rank percentiles as in stream.stats) plus the
ingest cost per block.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from spikereveal.errors import ConfigError

__all__ = ["bench_transport", "format_table", "REAL_TIME_RATE_HZ"]

REAL_TIME_RATE_HZ = 40_000.0  # the spike sensor's frame rate


@dataclass(frozen=True)
class _SpikeMeta:
    height: int
    width: int
    rate_hz: float
    t0_ns: int = 0
    bit_order: str = "little"
    flip_rows: bool = False


@dataclass(frozen=True)
class _RgbMeta:
    height: int = 4
    width: int = 4


@dataclass(frozen=True)
class _Meta:
    spike: _SpikeMeta
    rgb: _RgbMeta = field(default_factory=_RgbMeta)


class _SyntheticSpikes:
    """``frame_count`` frames cycling through a pool of random packed frames (block-aligned reads, no copies)."""

    def __init__(self, frame_count: int, pool: np.ndarray):
        self.frame_count = frame_count
        self._pool = pool

    def read(self, first: int, stop: int) -> np.ndarray:
        start = first % self._pool.shape[0]
        return self._pool[start:start + (stop - first)]


class _SyntheticRecording:
    """Just what the replay publisher reads: meta, spikes, and no exposures."""

    def __init__(self, height: int, width: int, rate_hz: float, frame_count: int, block_frames: int, seed: int):
        from spikereveal.kernels.packing import pack_frames

        rng = np.random.default_rng(seed)
        pool_frames = block_frames * max(1, 256 // block_frames)
        self.meta = _Meta(_SpikeMeta(height, width, rate_hz))
        self.spikes = _SyntheticSpikes(frame_count, pack_frames(rng.random((pool_frames, height, width)) < 0.1))
        self.exposures: tuple = ()
        self.path = "synthetic"

    def exposure(self, index):  # pragma: no cover - there are none
        raise KeyError(index)


def _run_once(recording, block_frames: int, speed: float, endpoint_kind: str, timeout_s: float) -> dict:
    """One run on private endpoints; the ipc socket folder is removed afterwards, whatever happens."""
    folder = tempfile.mkdtemp(prefix="sr-bt-", dir="/tmp") if endpoint_kind == "ipc" else None  # short ipc paths
    try:
        return _measure(recording, block_frames, speed, folder, timeout_s)
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _measure(recording, block_frames: int, speed: float, folder: str | None, timeout_s: float) -> dict:
    import zmq

    from spikereveal.stream.stats import latency_stats
    from spikereveal.stream import transport
    from spikereveal.stream.protocol import Heartbeat, Kind, ProtocolError, SpikeBlock, decode
    from spikereveal.stream.replay import LiveReplay, ReplayConfig
    from spikereveal.stream.sync import SyncConfig, Synchroniser

    if folder is not None:
        spike_ep, rgb_ep = f"ipc://{folder}/s", f"ipc://{folder}/r"
    else:
        spike_ep = rgb_ep = "tcp://127.0.0.1:*"
    expected_blocks = math.ceil(recording.spikes.frame_count / block_frames)
    config = ReplayConfig(speed=speed, block_frames=block_frames, wait_for_subscribers=True, start_delay_s=0.0,
                          subscriber_timeout_s=20.0, drain_s=0.3, heartbeat_interval_s=0.05,
                          spike_stream_id=1, rgb_stream_id=2)
    context = zmq.Context()
    sync = Synchroniser(SyncConfig())
    latencies_ns = np.zeros(expected_blocks, np.int64)
    ingest_ns = np.zeros(expected_blocks, np.int64)
    state = {"blocks": 0, "frames": 0, "first_ns": None, "last_ns": None, "done": False}
    stop = threading.Event()
    replay_result: dict = {}
    with LiveReplay(recording, spike_ep, rgb_ep, config, context=context) as replay:
        subs = [transport.open_subscriber(context, replay.spike_endpoint, receive_hwm=100_000),
                transport.open_subscriber(context, replay.rgb_endpoint)]
        publisher = threading.Thread(target=lambda: replay_result.setdefault("stats", replay.run(stop=stop)))
        publisher.start()
        poller = zmq.Poller()
        for s in subs:
            poller.register(s, zmq.POLLIN)
        deadline = time.monotonic() + timeout_s
        clock = time.monotonic_ns
        try:
            while not state["done"] and time.monotonic() < deadline:
                for socket, _ in poller.poll(100):
                    while True:
                        try:
                            parts = socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        received = clock()
                        try:
                            message = decode(parts)
                        except ProtocolError as exc:
                            sync.count_malformed(exc)
                            continue
                        sync.handle(message, received)
                        done = clock()
                        if isinstance(message, SpikeBlock):
                            i = state["blocks"]
                            if i < expected_blocks:
                                latencies_ns[i] = done - message.send_time_ns
                                ingest_ns[i] = done - received
                            state["blocks"] += 1
                            state["frames"] += message.frame_count
                            state["first_ns"] = state["first_ns"] or received
                            state["last_ns"] = done
                        elif (isinstance(message, Heartbeat) and message.stream_kind == Kind.SPIKE_BLOCK
                              and message.last_seq == expected_blocks - 1):
                            state["done"] = True
        finally:
            stop.set()
            publisher.join(30)
            for s in subs:
                s.close(linger=0)
    context.term()
    stats = replay_result.get("stats")
    n = min(state["blocks"], expected_blocks)
    span_s = ((state["last_ns"] or 0) - (state["first_ns"] or 0)) / 1e9
    frames_per_s = state["frames"] / span_s if span_s > 0 else None
    return {
        "speed": speed,
        "target_frames_per_s": None if math.isinf(speed) else speed * recording.meta.spike.rate_hz,
        "frames_sent": recording.spikes.frame_count,
        "frames_received": state["frames"],
        "messages_received": state["blocks"],
        "frames_per_s": frames_per_s,
        "messages_per_s": state["blocks"] / span_s if span_s > 0 else None,
        "real_time_factor": None if frames_per_s is None else frames_per_s / REAL_TIME_RATE_HZ,
        "loss": {
            "frames_lost": recording.spikes.frame_count - state["frames"],
            "gaps": sync.counters.gaps,
            "publisher_drops": stats.dropped_messages if stats else None,
            "malformed": sync.counters.malformed,
            "complete": bool(state["done"] and state["frames"] == recording.spikes.frame_count),
        },
        "latency_per_block": latency_stats(latencies_ns[:n], unit="ns"),
        "ingest_per_block": latency_stats(ingest_ns[:n], unit="ns"),
        "publisher_max_lag_ms": stats.max_lag_ns / 1e6 if stats else None,
    }


def bench_transport(height: int = 250, width: int = 400, block_frames: int = 32, seconds: float = 2.0,
                    rates_hz=(2 * REAL_TIME_RATE_HZ, None), endpoint: str = "ipc", seed: int = 0,
                    timeout_s: float = 60.0) -> dict:
    """Run one paced run per rate in ``rates_hz`` (None: unpaced), each ``seconds`` of stream at the paced
    rate (the unpaced run sends as many frames as the first paced one). Returns a JSON-able dict."""
    if endpoint not in ("ipc", "tcp"):
        raise ConfigError(f"endpoint must be ipc or tcp (loopback), got {endpoint!r}")
    if (height * width) % 8:
        raise ConfigError(f"{height}x{width} pixels are not a multiple of 8")
    if not seconds > 0:
        raise ConfigError(f"seconds must be positive, got {seconds}")
    paced = [r for r in rates_hz if r is not None]
    frame_count = int(seconds * (paced[0] if paced else 2 * REAL_TIME_RATE_HZ))
    frame_count = max(block_frames, frame_count - frame_count % block_frames)
    recording = _SyntheticRecording(height, width, REAL_TIME_RATE_HZ, frame_count, block_frames, seed)
    runs = []
    for rate in rates_hz:
        speed = math.inf if rate is None else rate / REAL_TIME_RATE_HZ
        runs.append(_run_once(recording, block_frames, speed, endpoint, timeout_s))
    return {
        "benchmark": "transport",
        "geometry": {"height": height, "width": width, "frame_bytes": height * width // 8},
        "block_frames": block_frames,
        "sensor_rate_hz": REAL_TIME_RATE_HZ,
        "endpoint": endpoint,
        "frames_per_run": frame_count,
        "latency": "publisher send_time_ns -> decoded and stored in the synchroniser ring (same host)",
        "runs": runs,
    }


def format_table(result: dict) -> str:
    lines = [f"transport {result['endpoint']} {result['geometry']['height']}x{result['geometry']['width']}, "
             f"{result['block_frames']} frames/message, {result['frames_per_run']} frames per run",
             f"{'target':>12} {'frames/s':>12} {'msgs/s':>9} {'x40kHz':>7} {'lost':>6} {'gaps':>5} {'drops':>6} "
             f"{'p50 ms':>8} {'p99 ms':>8} {'ingest p99':>10}"]
    for run in result["runs"]:
        target = "unpaced" if run["target_frames_per_s"] is None else f"{run['target_frames_per_s']:,.0f}"
        lat, ingest, loss = run["latency_per_block"], run["ingest_per_block"], run["loss"]

        def num(value, fmt):
            return "-" if value is None else format(value, fmt)

        lines.append(f"{target:>12} {num(run['frames_per_s'], ',.0f'):>12} {num(run['messages_per_s'], ',.0f'):>9} "
                     f"{num(run['real_time_factor'], '.2f'):>7} {loss['frames_lost']:>6} {loss['gaps']:>5} "
                     f"{num(loss['publisher_drops'], 'd'):>6} {num(lat['p50_ms'], '.3f'):>8} "
                     f"{num(lat['p99_ms'], '.3f'):>8} {num(ingest['p99_ms'], '.3f'):>10}")
    return "\n".join(lines)
