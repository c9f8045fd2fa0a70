"""Shared by the stream tests (not a test module): a tiny rig recording (replay, driver, auth) and a fake
runner with a known, cheap network (worker, auth)."""

from __future__ import annotations

import threading

import numpy as np

from spikereveal.engines.runners import Runner
from spikereveal.kernels.extract import SPIKE_LEVEL
from spikereveal.kernels.packing import pack_frames
from spikereveal.kernels.timing import index_to_time
from spikereveal.recording import RecordingWriter, RgbMeta, SpikeMeta, open_recording

H, W = 8, 24
RATE_HZ = 1000.0
PERIOD_NS = 1_000_000
T0_NS = 7_000_000
FRAMES = 203  # not a multiple of the block size
EXPOSURE_STARTS = (5, 25, 60, 100, 150, 185)  # first and last have windows outside the data
EXPOSURE_FRAMES = 20


def tiny_rig_recording(path, seed: int):
    """Write random spikes (big-endian bits, rows flipped) and exposures at EXPOSURE_STARTS; open it leniently."""
    rng = np.random.default_rng(seed)
    spike = SpikeMeta(height=H, width=W, rate_hz=RATE_HZ, t0_ns=T0_NS, flip_rows=True, bit_order="big")
    with RecordingWriter(path, spike, RgbMeta(height=4 * H, width=4 * W)) as writer:
        writer.append_spikes(pack_frames(rng.random((FRAMES, H, W)) < 0.25))
        for first in EXPOSURE_STARTS:
            image = rng.integers(0, 256, (4 * H, 4 * W, 3), dtype=np.uint8)
            writer.add_exposure(int(index_to_time(first, T0_NS, RATE_HZ)), EXPOSURE_FRAMES * PERIOD_NS, image)
    return open_recording(path, strict=False)


class FakeRunner(Runner):
    """sharp = image / 2 + mean spike level (nearest-upsampled), in uint8 like the deployed graph; ``gate``
    (an Event) holds each inference."""

    name = "fake"

    def __init__(self, shape, gate: threading.Event | None = None):
        super().__init__(shape, options=None)
        self.gate = gate
        self.started = threading.Semaphore(0)
        self.calls = 0

    def _load(self):
        self.sharp = np.empty(self.shape.sharp, np.uint8)

    def _infer(self, image, spikes, out):
        if self.gate is not None and self.loaded and self.calls >= 0:
            self.started.release()
            assert self.gate.wait(30)
        self.calls += 1
        target = self.sharp if out is None else out
        target[:] = fake_network(image, spikes.astype(np.float64) / SPIKE_LEVEL)
        return target


def fake_network(image: np.ndarray, spikes: np.ndarray) -> np.ndarray:
    """(1,H,W,3) uint8 and (K,S,h,w) spike fractions -> (K,H,W,3) uint8."""
    spike_mean = np.repeat(np.repeat(spikes.mean(axis=1), 4, axis=1), 4, axis=2)[..., None]
    return np.clip(image.astype(np.float64) / 2 + 100 * spike_mean, 0, 255).astype(np.uint8)


class ServerThread:
    """``serve`` running in a thread for a test: ``start()`` waits until it is ready (its errors surfaced),
    ``join()`` waits for its end and returns its counters."""

    def __init__(self, config):
        from spikereveal.stream.serve import Server

        self.server = Server(config)
        self.counters = None
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="test-serve")

    def _run(self) -> None:
        try:
            self.counters = self.server.run()
        except BaseException as exc:  # surfaced by start()/join()
            self.errors.append(exc)
            self.server.ready.set()

    def start(self, timeout_s: float = 120.0) -> "ServerThread":
        self.thread.start()
        assert self.server.ready.wait(timeout_s), "serve did not get ready"
        assert not self.errors, self.errors
        return self

    def join(self, timeout_s: float = 120.0):
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "serve did not stop"
        assert not self.errors, self.errors
        return self.counters


def free_tcp_endpoints(count: int) -> list[str]:
    """``count`` loopback tcp endpoints on ports that were free a moment ago (bound, then released)."""
    import zmq

    context = zmq.Context()
    ports = []
    for _ in range(count):
        probe = context.socket(zmq.PULL)
        ports.append(probe.bind_to_random_port("tcp://127.0.0.1"))
        probe.close(linger=0)
    context.term()
    return [f"tcp://127.0.0.1:{port}" for port in ports]

