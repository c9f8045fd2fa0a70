"""The rig driver interface: the sink's contract, batching, drops, failures, and a recording driven through
RigPublisher -> SUB sockets -> Synchroniser on loopback."""

import threading
import time

import numpy as np
import pytest

from spikereveal.errors import ConfigError, SpikeRevealError
from spikereveal.kernels.packing import to_canonical
from spikereveal.stream.clock import ManualClock
from spikereveal.stream.driver import (
    RecordingDriver,
    RigDriver,
    RigPublisher,
    RigPublisherConfig,
    RigPump,
    SpikeFormat,
)
from spikereveal.stream.protocol import Heartbeat, Kind, RgbExposure, SpikeBlock, decode
from spikereveal.stream.sync import Synchroniser
from stream_support import (  # noqa: E402
    EXPOSURE_STARTS,
    FRAMES,
    H,
    RATE_HZ,
    T0_NS,
    W,
    tiny_rig_recording,
)

FORMAT = SpikeFormat(height=H, width=W, rate_hz=RATE_HZ, t0_ns=T0_NS, bit_order="big", flip_rows=True)


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    rec = tiny_rig_recording(tmp_path_factory.mktemp("rec") / "tiny", seed=5)
    yield rec
    rec.close()


class ScriptedDriver(RigDriver):
    """Delivers a fixed script inside ``start`` (as an SDK callback would), then finishes (or not)."""

    def __init__(self, script, finish=True, spike_format=FORMAT):
        self.script, self.finish, self.format = script, finish, spike_format
        self.started = self.stopped = 0
        self.sink = None
        self.results = []

    def spike_format(self):
        return self.format

    def start(self, sink):
        self.started += 1
        self.sink = sink
        for step in self.script:
            self.results.append(step(sink))
        if self.finish:
            sink.finish()

    def stop(self):
        self.stopped += 1


class Sink:
    def __init__(self):
        self.sent = []

    def __call__(self, parts):
        self.sent.append(decode([bytes(p) for p in parts]))
        return True


def _pump(driver, **config):
    spikes, rgb = Sink(), Sink()
    config = RigPublisherConfig(**{"drain_s": 0, "spike_stream_id": 1, "rgb_stream_id": 2, **config})
    pump = RigPump(driver, config, spikes, rgb, clock=ManualClock(0))
    return pump, spikes.sent, rgb.sent


def _frames(rng, n):
    return rng.integers(0, 256, (n, H * W // 8), dtype=np.uint8)


# -- the sink and the pump, without sockets -----------------------------------------------------------------
def test_contiguous_deliveries_are_batched_and_split_at_block_frames_and_gaps():
    rng = np.random.default_rng(0)
    frames = _frames(rng, 40)
    image = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    script = [lambda s, i=i: s.spike_block(i, frames[i]) for i in range(20)]  # one frame per callback
    script.append(lambda s: s.exposure(123, 456, image))
    script.append(lambda s: s.spike_block(20, frames[20:25]))
    script.append(lambda s: s.spike_block(30, frames[30:40]))  # frames 25..29 never delivered: a gap
    pump, spikes, rgb = _pump(ScriptedDriver(script), block_frames=8)
    stats = pump.run()
    blocks = [m for m in spikes if isinstance(m, SpikeBlock)]
    assert [(b.first_index, b.frame_count) for b in blocks] == [(0, 8), (8, 8), (16, 4), (20, 5), (30, 8), (38, 2)]
    assert [b.seq for b in blocks] == list(range(6)) and {b.stream_id for b in blocks} == {1}
    assert all((b.bit_order, b.flip_rows, b.t0_ns, b.rate_hz) == ("big", True, T0_NS, RATE_HZ) for b in blocks)
    expected = np.concatenate([frames[:25], frames[30:]])
    assert np.array_equal(np.concatenate([b.packed for b in blocks]), expected)
    (exposure,) = [m for m in rgb if isinstance(m, RgbExposure)]
    assert (exposure.frame_id, exposure.start_ns, exposure.duration_ns) == (0, 123, 456)
    assert np.array_equal(exposure.image, image)
    spike_beat = [m for m in spikes if isinstance(m, Heartbeat)][-1]
    assert (spike_beat.last_seq, spike_beat.position) == (5, 40)
    assert (stats.spike_frames, stats.spike_messages, stats.exposures, stats.dropped_messages) == (35, 6, 1, 0)


def test_exposure_between_spike_deliveries_keeps_the_delivery_order():
    rng = np.random.default_rng(1)
    frames = _frames(rng, 4)
    image = np.zeros((2, 2, 3), np.uint8)
    order = []
    script = [lambda s: s.spike_block(0, frames[:2]), lambda s: s.exposure(0, 1, image, frame_id=9),
              lambda s: s.spike_block(2, frames[2:])]

    def record(parts):
        order.append(decode([bytes(p) for p in parts]))
        return True

    RigPump(ScriptedDriver(script), RigPublisherConfig(drain_s=0), record, record, clock=ManualClock(0)).run()
    data = [m for m in order if not isinstance(m, Heartbeat)]
    assert [(type(m).__name__, getattr(m, "first_index", getattr(m, "frame_id", None))) for m in data] == \
        [("SpikeBlock", 0), ("RgbExposure", 9), ("SpikeBlock", 2)]


def test_full_handover_queue_drops_and_counts_without_blocking_the_driver():
    rng = np.random.default_rng(2)
    frames = _frames(rng, 10)
    image = np.zeros((2, 2, 3), np.uint8)
    script = [lambda s, i=i: s.spike_block(i, frames[i]) for i in range(10)]
    script += [lambda s: s.exposure(0, 1, image)] * 3
    driver = ScriptedDriver(script)
    pump, spikes, rgb = _pump(driver, max_queued_spike_blocks=4, max_queued_exposures=2)
    stats = pump.run()
    assert driver.results == [True] * 4 + [False] * 6 + [True, True, False]
    assert (stats.handover_dropped_blocks, stats.handover_dropped_frames, stats.handover_dropped_exposures) == (6, 6, 1)
    assert stats.spike_frames == 4 and stats.exposures == 2 and stats.max_queued == 6
    assert [m.frame_id for m in rgb if isinstance(m, RgbExposure)] == [0, 1]


def test_sink_copies_by_default_because_sdks_recycle_buffers():
    buffer = np.full((2, H * W // 8), 7, np.uint8)

    def deliver_and_recycle(sink):
        sink.spike_block(0, buffer)
        buffer[:] = 0  # the SDK reuses its buffer once the callback returns
        sink.spike_block(2, buffer, copy=False)  # the caller promised not to touch this one

    pump, spikes, _ = _pump(ScriptedDriver([deliver_and_recycle]))
    pump.run()
    (block,) = [m for m in spikes if isinstance(m, SpikeBlock)]
    assert np.array_equal(block.packed[:2], np.full((2, H * W // 8), 7)) and not block.packed[2:].any()


@pytest.mark.parametrize("deliver, match", [
    (lambda s: s.spike_block(0, np.zeros((2, 5), np.uint8)), "spike block"),
    (lambda s: s.spike_block(0, np.zeros((2, H * W // 8), np.int16)), "spike block"),
    (lambda s: s.spike_block(-1, np.zeros((1, H * W // 8), np.uint8)), "first_index"),
    (lambda s: s.exposure(0, 1, np.zeros((4, 4), np.uint8)), "BGR"),
    (lambda s: s.exposure(0, -1, np.zeros((4, 4, 3), np.uint8)), "duration_ns"),
    (lambda s: s.exposure(0.5, 1, np.zeros((4, 4, 3), np.uint8)), "start_ns"),
    (lambda s: s.exposure(0, 1, np.zeros((4, 4, 3), np.uint8), frame_id=-3), "frame_id"),
])
def test_malformed_deliveries_raise_in_the_driver_thread(deliver, match):
    driver = ScriptedDriver([deliver])
    pump, spikes, rgb = _pump(driver)
    with pytest.raises(ConfigError, match=match):
        pump.run()
    assert driver.stopped == 1  # the driver is stopped whatever happens


def test_driver_failure_stops_the_publisher_and_is_raised():
    rng = np.random.default_rng(3)
    frames = _frames(rng, 3)
    script = [lambda s: s.spike_block(0, frames), lambda s: s.fail(OSError("camera unplugged"))]
    driver = ScriptedDriver(script, finish=False)
    pump, spikes, _ = _pump(driver)
    with pytest.raises(SpikeRevealError, match="camera unplugged"):
        pump.run()
    assert driver.stopped == 1


def test_stop_request_publishes_what_was_delivered_and_refuses_the_rest():
    rng = np.random.default_rng(4)
    frames = _frames(rng, 6)
    holder = {}
    script = [lambda s: s.spike_block(0, frames[:3]), lambda s: holder["pump"].request_stop()]
    driver = ScriptedDriver(script, finish=False)
    pump, spikes, _ = _pump(driver)
    holder["pump"] = pump
    stats = pump.run()
    assert stats.stopped and driver.stopped == 1 and stats.spike_frames == 3
    assert driver.sink.spike_block(3, frames[3:]) is False and pump.sink.refused_after_close == 1


@pytest.mark.parametrize("field, value", [("block_frames", 0), ("block_frames", 5000), ("max_queued_exposures", 0),
                                          ("heartbeat_interval_s", 0), ("drain_s", -1), ("rgb_stream_id", 2**32)])
def test_publisher_config_is_validated(field, value):
    with pytest.raises(ConfigError, match=field):
        RigPublisherConfig(**{field: value})


@pytest.mark.parametrize("field, value", [("height", 0), ("width", 5000), ("rate_hz", 0.0), ("bit_order", "middle"),
                                          ("t0_ns", 1.5)])
def test_spike_format_is_validated(field, value):
    with pytest.raises(ConfigError, match=field):
        SpikeFormat(**{**FORMAT.__dict__, field: value})


def test_odd_sensor_that_does_not_pack_into_bytes_is_refused():
    with pytest.raises(ConfigError, match="multiple of 8"):
        SpikeFormat(height=3, width=5, rate_hz=1.0)


def test_a_driver_must_subclass_rig_driver():
    with pytest.raises(ConfigError, match="RigDriver"):
        RigPump(object(), RigPublisherConfig(), Sink(), Sink())
    with pytest.raises(TypeError):
        RigDriver()  # abstract: spike_format, start and stop must be implemented


# -- a recording through the driver interface, on real sockets -----------------------------------------------
def test_recording_driver_through_rig_publisher_into_the_synchroniser(recording):
    zmq = pytest.importorskip("zmq")
    from spikereveal.stream import transport

    config = RigPublisherConfig(block_frames=16, wait_for_subscribers=True, subscriber_timeout_s=10,
                                heartbeat_interval_s=0.02, drain_s=0.3)
    driver = RecordingDriver(recording, frames_per_delivery=3)  # unpaced; 3 frames per "callback"
    context = zmq.Context()
    stop = threading.Event()
    result = {}
    sync = Synchroniser()
    jobs, blocks, exposures, done = [], [], [], set()
    with RigPublisher(driver, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", config, context=context) as publisher:
        subs = [transport.open_subscriber(context, publisher.spike_endpoint),
                transport.open_subscriber(context, publisher.rgb_endpoint)]
        thread = threading.Thread(target=lambda: result.setdefault("stats", publisher.run(stop=stop)))
        thread.start()
        try:
            poller = zmq.Poller()
            for s in subs:
                poller.register(s, zmq.POLLIN)
            deadline = time.monotonic() + 20
            while len(done) < 2 and time.monotonic() < deadline:  # until heartbeats say all arrived
                for socket, _ in poller.poll(100):
                    parts = socket.recv_multipart(copy=False)
                    message = decode(parts)
                    jobs += sync.feed(parts, time.monotonic_ns())
                    if isinstance(message, SpikeBlock):
                        blocks.append(message)
                    elif isinstance(message, RgbExposure):
                        exposures.append(message)
                    elif message.stream_kind == Kind.SPIKE_BLOCK:
                        if message.position == FRAMES and message.last_seq == len(blocks) - 1:
                            done.add(Kind.SPIKE_BLOCK)
                    elif message.last_seq == len(EXPOSURE_STARTS) - 1 == len(exposures) - 1:
                        done.add(Kind.RGB_EXPOSURE)
        finally:
            stop.set()
            thread.join(10)
            for s in subs:
                s.close(linger=0)
    context.term()
    assert not thread.is_alive() and done == {Kind.SPIKE_BLOCK, Kind.RGB_EXPOSURE}
    stats = result["stats"]
    assert stats.dropped_messages == 0 and stats.handover_dropped_blocks == 0 and stats.spike_frames == FRAMES
    assert all(b.frame_count <= 16 for b in blocks) and [b.seq for b in blocks] == list(range(len(blocks)))
    frames = np.concatenate([to_canonical(b.packed, H, W, b.bit_order, b.flip_rows) for b in blocks])
    assert np.array_equal(frames, recording.spikes.read(0, FRAMES))  # camera layout on the wire, exact
    assert [m.frame_id for m in exposures] == [e.index for e in recording.exposures]
    c = sync.counters
    assert (c.gaps, c.malformed, c.duplicates, c.restarts) == (0, 0, 0, 0)
    complete = [e.index for e in recording.exposures if recording.window_complete(e.index)]
    assert [j.exposure_id for j in jobs] == complete and len(complete) == len(EXPOSURE_STARTS) - 2
    for job in jobs:  # every complete exposure arrives with exactly its spike window and its image
        assert np.array_equal(job.packed, recording.window_spikes(job.exposure_id))
        assert np.array_equal(job.image.transpose(2, 0, 1) / np.float32(255), recording.read_exposure(job.exposure_id))
