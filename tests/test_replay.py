"""Replay: the pure schedule, pacing on a manual clock, drops, and real loopback sockets with zero loss."""

import itertools
import json
import math
import shutil
import tempfile
import threading
import time

import numpy as np
import pytest

from spikereveal.errors import ConfigError
from spikereveal.kernels.timing import exposure_window
from spikereveal.stream.clock import ManualClock
from spikereveal.stream.protocol import Heartbeat, Kind, RgbExposure, SpikeBlock, decode
from spikereveal.stream.replay import Replayer, ReplayConfig, replay_schedule
from spikereveal.stream.sync import Synchroniser
from stream_support import (  # noqa: E402
    EXPOSURE_FRAMES,
    EXPOSURE_STARTS,
    FRAMES,
    H,
    PERIOD_NS,
    RATE_HZ,
    T0_NS,
    W,
    tiny_rig_recording,
)


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    rec = tiny_rig_recording(tmp_path_factory.mktemp("rec") / "tiny", seed=3)
    yield rec
    rec.close()


def _schedule(rec, block=16, loops=1):
    return replay_schedule(rec.spikes.frame_count, T0_NS, RATE_HZ, rec.exposures, block, loops)


# -- schedule ---------------------------------------------------------------------------------------------
def test_schedule_covers_every_frame_once_in_time_order(recording):
    events = list(_schedule(recording))
    blocks = [e for e in events if e.kind == Kind.SPIKE_BLOCK]
    covered = np.concatenate([np.arange(b.first_index, b.first_index + b.frame_count) for b in blocks])
    assert np.array_equal(covered, np.arange(FRAMES))
    assert all(b.frame_count == 16 for b in blocks[:-1]) and blocks[-1].frame_count == FRAMES % 16
    for b in blocks:  # due when the block's last frame is captured
        assert b.due_ns == (b.first_index + b.frame_count - 1) * PERIOD_NS
    exposures = [e for e in events if e.kind == Kind.RGB_EXPOSURE]
    assert [e.exposure_index for e in exposures] == list(range(len(EXPOSURE_STARTS)))
    for e, first in zip(exposures, EXPOSURE_STARTS):
        assert e.due_ns == (first + EXPOSURE_FRAMES) * PERIOD_NS and e.frame_id == e.exposure_index
    dues = [e.due_ns for e in events]
    assert dues == sorted(dues)


def test_schedule_puts_the_block_holding_an_exposure_end_first():
    class E:
        index, start_ns, duration_ns = 0, T0_NS + 5 * PERIOD_NS, 10 * PERIOD_NS  # ends at frame 15

    events = list(replay_schedule(64, T0_NS, RATE_HZ, [E()], 16, 1))
    position = next(i for i, e in enumerate(events) if e.kind == Kind.RGB_EXPOSURE)
    assert events[position - 1].kind == Kind.SPIKE_BLOCK and events[position - 1].due_ns == events[position].due_ns


def test_looped_schedule_continues_one_stream(recording):
    events = list(itertools.islice(_schedule(recording, block=16, loops=None), 200))
    blocks = [e for e in events if e.kind == Kind.SPIKE_BLOCK]
    stream = np.concatenate([np.arange(b.stream_index, b.stream_index + b.frame_count) for b in blocks])
    assert np.array_equal(stream, np.arange(stream.size))  # indices continue across passes
    assert max(b.loop for b in blocks) >= 2
    exposures = [e for e in events if e.kind == Kind.RGB_EXPOSURE]
    inside = [i for i, f in enumerate(EXPOSURE_STARTS) if 10 <= f and f + EXPOSURE_FRAMES + 1 + 10 <= FRAMES]
    assert [e.exposure_index for e in exposures if e.loop == 0] == inside  # straddling windows left out
    ids = [e.frame_id for e in exposures]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    second = [e for e in exposures if e.loop == 1]
    assert second[0].shift_ns == FRAMES * PERIOD_NS
    assert second[0].due_ns == (EXPOSURE_STARTS[second[0].exposure_index] + EXPOSURE_FRAMES + FRAMES) * PERIOD_NS


@pytest.mark.parametrize(
    "field, value",
    [("speed", 0), ("speed", -1.0), ("block_frames", 0), ("block_frames", 5000), ("loops", 0),
     ("start_delay_s", -1), ("heartbeat_interval_s", 0), ("wire_layout", "weird"), ("spike_stream_id", 2**32)],
)
def test_replay_config_is_validated(field, value):
    with pytest.raises(ConfigError, match=field):
        ReplayConfig(**{field: value})


# -- pacing on a manual clock --------------------------------------------------------------------------------
class Sink:
    def __init__(self, clock, refuse=lambda message: False):
        self.clock, self.refuse = clock, refuse
        self.sent = []  # (clock time, decoded message)

    def __call__(self, parts):
        message = decode([bytes(p) for p in parts])
        if self.refuse(message):
            return False
        self.sent.append((self.clock.now_ns(), message))
        return True


def _replay(rec, config, start_ns=10**9, spike_refuse=lambda m: False):
    clock = ManualClock(start_ns)
    spikes, rgb = Sink(clock, spike_refuse), Sink(clock)
    stats = Replayer(rec, config, spikes, rgb, clock=clock).run()
    return clock, stats, spikes.sent, rgb.sent


@pytest.mark.parametrize("speed", [1.0, 4.0])
def test_messages_leave_on_schedule(recording, speed):
    config = ReplayConfig(speed=speed, block_frames=16, heartbeat_interval_s=0.05, drain_s=0.1)
    start = 10**9
    clock, stats, spikes, rgb = _replay(recording, config, start)
    expected = {(e.kind, e.first_index if e.kind == Kind.SPIKE_BLOCK else e.frame_id): start + int(e.due_ns / speed)
                for e in _schedule(recording)}
    data = [(t, m) for t, m in spikes + rgb if not isinstance(m, Heartbeat)]
    assert len(data) == len(expected)
    for t, m in data:
        key = (Kind.SPIKE_BLOCK, m.first_index) if isinstance(m, SpikeBlock) else (Kind.RGB_EXPOSURE, m.frame_id)
        assert t == expected[key]
        assert m.send_time_ns == t
    assert stats.max_lag_ns == 0 and stats.dropped_messages == 0 and not stats.stopped
    assert (stats.spike_frames, stats.exposures, stats.loops_completed) == (FRAMES, len(EXPOSURE_STARTS), 1)
    # heartbeats every 50 ms of wall time on both sockets, then for the 100 ms drain
    streaming_ns = max(expected.values()) - start
    beats = [t for t, m in spikes if isinstance(m, Heartbeat)]
    assert abs(len(beats) - (streaming_ns // 50_000_000 + 1 + 3)) <= 1
    assert np.all(np.diff(beats) <= 50_000_000)
    assert stats.heartbeats == 2 * len(beats)


def test_unpaced_replay_never_waits(recording):
    config = ReplayConfig(speed=math.inf, block_frames=64, drain_s=0)
    clock, stats, spikes, rgb = _replay(recording, config)
    assert clock.sleeps == 0 and clock.now_ns() == 10**9
    assert stats.spike_frames == FRAMES


def test_payloads_are_the_recording(recording):
    config = ReplayConfig(speed=math.inf, block_frames=16, drain_s=0, wire_layout="recorded")
    _, stats, spikes, rgb = _replay(recording, config)
    blocks = [m for _, m in spikes if isinstance(m, SpikeBlock)]
    assert all(b.bit_order == "big" and b.flip_rows for b in blocks)
    from spikereveal.kernels.packing import to_canonical

    frames = np.concatenate([to_canonical(b.packed, H, W, b.bit_order, b.flip_rows) for b in blocks])
    assert np.array_equal(frames, recording.spikes.read(0, FRAMES))
    assert [b.seq for b in blocks] == list(range(len(blocks)))
    assert len({b.stream_id for b in blocks}) == 1 and blocks[0].stream_id == stats.spike_stream_id
    exposures = [m for _, m in rgb if isinstance(m, RgbExposure)]
    for m, e in zip(exposures, recording.exposures):
        assert (m.start_ns, m.duration_ns) == (e.start_ns, e.duration_ns)
        assert np.array_equal(m.image.transpose(2, 0, 1) / np.float32(255), recording.read_exposure(e.index))
    last = [m for _, m in spikes if isinstance(m, Heartbeat)][-1]
    assert (last.last_seq, last.position) == (len(blocks) - 1, FRAMES)


def _sync_over(events):
    sync = Synchroniser()
    jobs = []
    for t, m in sorted(events, key=lambda x: x[0]):  # stable: the send order at equal times
        jobs += sync.handle(m, t)
    return sync, jobs


def test_replay_into_the_synchroniser_gives_every_complete_window(recording):
    config = ReplayConfig(speed=1.0, block_frames=16, drain_s=0.05, wire_layout="recorded")
    _, _, spikes, rgb = _replay(recording, config)
    sync, jobs = _sync_over(spikes + rgb)
    complete = [e.index for e in recording.exposures if recording.window_complete(e.index)]
    assert [j.exposure_id for j in jobs] == complete and len(complete) == len(EXPOSURE_STARTS) - 2
    for job in jobs:
        assert np.array_equal(job.packed, recording.window_spikes(job.exposure_id))
    c = sync.counters
    assert (c.gaps, c.duplicates, c.malformed, c.exposures_skipped) == (0, 0, 0, 1)  # the first: stream_start
    assert sync.pending_count == 1  # the last waits for frames past the end (and would time out)


def test_dropped_sends_use_up_sequence_numbers_so_the_receiver_sees_the_gap(recording):
    config = ReplayConfig(speed=1.0, block_frames=16, drain_s=0.05)
    refused = lambda m: isinstance(m, SpikeBlock) and m.first_index == 64  # noqa: E731
    _, stats, spikes, rgb = _replay(recording, config, spike_refuse=refused)
    assert stats.dropped_messages == 1 and stats.drops_by_kind == {"spike_block": 1}
    sync, jobs = _sync_over(spikes + rgb)
    assert sync.counters.gaps == 1
    lost = {e.index for e in recording.exposures
            if recording.window_complete(e.index)
            and recording.exposure_window(e.index).window_first < 80
            and recording.exposure_window(e.index).window_stop > 64}
    assert lost and not lost & {j.exposure_id for j in jobs}


def test_stop_event_ends_the_replay(recording):
    clock = ManualClock(0)
    stop = threading.Event()
    sent = []

    def send(parts):
        sent.append(parts)
        if len(sent) == 5:
            stop.set()
        return True

    stats = Replayer(recording, ReplayConfig(block_frames=8), send, send, clock=clock, stop=stop).run()
    assert stats.stopped and stats.spike_frames < FRAMES


def test_looped_replay_feeds_one_continuous_stream(recording):
    config = ReplayConfig(speed=math.inf, block_frames=16, loops=3, drain_s=0)
    _, stats, spikes, rgb = _replay(recording, config)
    assert stats.loops_completed == 3 and stats.spike_frames == 3 * FRAMES
    sync, jobs = _sync_over(spikes + rgb)
    assert sync.counters.restarts == 0 and sync.counters.gaps == 0 and sync.counters.exposures_skipped == 0
    per_pass = [e.index for e in recording.exposures if recording.window_complete(e.index)]
    assert len(jobs) == 3 * len(per_pass)
    stride = len(EXPOSURE_STARTS)
    for job in jobs:
        index = job.exposure_id % stride
        assert np.array_equal(job.packed, recording.window_spikes(index))
        assert job.first_index == recording.exposure_window(index).window_first + (job.exposure_id // stride) * FRAMES


# -- real sockets --------------------------------------------------------------------------------------------
def _receive_until_done(sockets, expect_blocks, expect_exposures, timeout_s=20.0):
    """Receive from SUB sockets until each stream's heartbeat says everything was sent and it all arrived."""
    import zmq

    poller = zmq.Poller()
    for s in sockets:
        poller.register(s, zmq.POLLIN)
    received, done = [], set()
    deadline = time.monotonic() + timeout_s
    while len(done) < 2 and time.monotonic() < deadline:
        for socket, _ in poller.poll(100):
            while True:
                try:
                    parts = socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                message = decode(parts)
                received.append((time.monotonic_ns(), message))
                if isinstance(message, Heartbeat):
                    want = expect_blocks if message.stream_kind == Kind.SPIKE_BLOCK else expect_exposures
                    if message.last_seq == want - 1:
                        done.add(message.stream_kind)
    return received, done


def test_loopback_replay_delivers_everything(recording):
    zmq = pytest.importorskip("zmq")
    from spikereveal.stream import transport
    from spikereveal.stream.replay import LiveReplay

    config = ReplayConfig(speed=20.0, block_frames=8, wait_for_subscribers=True, start_delay_s=0,
                          subscriber_timeout_s=10, drain_s=0.5, heartbeat_interval_s=0.02)
    context = zmq.Context()
    stop = threading.Event()
    result = {}
    with LiveReplay(recording, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", config, context=context) as replay:
        subs = [transport.open_subscriber(context, replay.spike_endpoint),
                transport.open_subscriber(context, replay.rgb_endpoint)]
        thread = threading.Thread(target=lambda: result.setdefault("stats", replay.run(stop=stop)))
        thread.start()
        try:
            n_blocks = math.ceil(FRAMES / 8)
            received, done = _receive_until_done(subs, n_blocks, len(EXPOSURE_STARTS))
        finally:
            stop.set()
            thread.join(10)
            for s in subs:
                s.close(linger=0)
    context.term()
    assert not thread.is_alive()
    assert done == {Kind.SPIKE_BLOCK, Kind.RGB_EXPOSURE}
    stats = result["stats"]
    assert stats.dropped_messages == 0
    blocks = [m for _, m in received if isinstance(m, SpikeBlock)]
    exposures = [m for _, m in received if isinstance(m, RgbExposure)]
    assert [b.seq for b in blocks] == list(range(n_blocks))  # zero loss, in order
    assert np.array_equal(np.concatenate([b.packed for b in blocks]), recording.spikes.read(0, FRAMES))
    assert [m.frame_id for m in exposures] == [e.index for e in recording.exposures]
    sync, jobs = _sync_over(received)
    assert sync.counters.gaps == 0 and sync.counters.malformed == 0
    assert [j.exposure_id for j in jobs] == [e.index for e in recording.exposures if recording.window_complete(e.index)]
    # paced at 20x: by the publisher's own send times, the last block left (FRAMES - 8) ms / 20 after the
    # first (less however late the first one was)
    span_ns = blocks[-1].send_time_ns - blocks[0].send_time_ns
    assert span_ns >= (FRAMES - 8) * PERIOD_NS / 20 - stats.max_lag_ns


def test_cli_replay_over_ipc(recording, tmp_path):
    zmq = pytest.importorskip("zmq")
    from spikereveal.commands import replay as command
    from spikereveal.stream import transport

    folder = tempfile.mkdtemp(prefix="sr-", dir="/tmp")  # ipc paths must stay short
    spike_ep, rgb_ep = f"ipc://{folder}/s", f"ipc://{folder}/r"
    stats_path = tmp_path / "stats.json"
    import argparse

    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    args = parser.parse_args(["replay", str(recording.path), "--spike-endpoint", spike_ep, "--rgb-endpoint", rgb_ep,
                              "--speed", "inf", "--block", "16", "--wait-subscribers", "--subscriber-timeout-s", "10",
                              "--drain-s", "0.3", "--stats-json", str(stats_path)])
    context = zmq.Context()
    got = {}

    def consume():
        subs = [transport.open_subscriber(context, spike_ep), transport.open_subscriber(context, rgb_ep)]
        try:
            got["received"], got["done"] = _receive_until_done(subs, math.ceil(FRAMES / 16), len(EXPOSURE_STARTS))
        finally:
            for s in subs:
                s.close(linger=0)

    consumer = threading.Thread(target=consume)
    consumer.start()
    try:
        assert args.func(args) == 0  # signal handlers need the main thread
    finally:
        consumer.join(20)
        context.term()
        shutil.rmtree(folder, ignore_errors=True)
    assert got["done"] == {Kind.SPIKE_BLOCK, Kind.RGB_EXPOSURE}
    stats = json.loads(stats_path.read_text())
    assert stats["spike_frames"] == FRAMES and stats["dropped_messages"] == 0
    frames = sum(m.frame_count for _, m in got["received"] if isinstance(m, SpikeBlock))
    assert frames == FRAMES


def test_window_helper_agrees_with_the_schedule(recording):
    # the schedule's loop filter and the recording's own completeness test use the same windows
    for e in recording.exposures:
        window = exposure_window(e.start_ns, e.duration_ns, T0_NS, RATE_HZ)
        assert window.inside(FRAMES) == recording.window_complete(e.index)


def test_replay_command_registers_without_importing_zmq():
    import subprocess
    import sys

    code = ("import argparse, sys\n"
            "from spikereveal.commands import replay\n"
            "p = argparse.ArgumentParser(); replay.register(p.add_subparsers())\n"
            "p.parse_args(['replay', 'REC', '--spike-endpoint', 'a', '--rgb-endpoint', 'b'])\n"
            "print('zmq' in sys.modules, 'spikereveal.stream.replay' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.split() == ["False", "False"]
