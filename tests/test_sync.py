"""The exposure-window synchroniser, driven by a manual clock: exact windows, loss, disorder, bounds."""

import numpy as np
import pytest

from spikereveal.errors import ConfigError
from spikereveal.kernels.packing import from_canonical, pack_frames
from spikereveal.kernels.timing import exposure_window, index_to_time
from spikereveal.stream.protocol import Heartbeat, Kind, RgbExposure, SpikeBlock, encode
from spikereveal.stream.sync import SyncConfig, Synchroniser

H, W = 8, 24  # non-square, H*W/8 = 24 bytes per frame
RATE_HZ = 1000.0  # 1 ms per spike frame keeps the arithmetic readable
PERIOD_NS = 1_000_000
T0_NS = 5_000_000
MARGIN = 10
SPIKE_ID, RGB_ID = 11, 22


def _frames(n, seed=0):
    rng = np.random.default_rng(seed)
    return pack_frames(rng.random((n, H, W)) < 0.3)


def _blocks(packed, block=8, stream_id=SPIKE_ID, first_seq=0, t0_ns=T0_NS, bit_order="big", flip_rows=True,
            first_index=0):
    out = []
    for seq, start in enumerate(range(0, packed.shape[0], block), start=first_seq):
        chunk = packed[start : start + block]
        out.append(SpikeBlock(
            stream_id=stream_id, seq=seq, first_index=first_index + start, t0_ns=t0_ns, rate_hz=RATE_HZ,
            height=H, width=W, packed=from_canonical(chunk, H, W, bit_order, flip_rows), bit_order=bit_order,
            flip_rows=flip_rows,
        ))
    return out


def _exposures(first_frames, duration_frames=30, offset_ns=0, stream_id=RGB_ID, t0_ns=T0_NS, first_seq=0):
    """Exposures starting at spike frames ``first_frames``; timestamps on an RGB clock ``offset_ns`` behind."""
    image = np.zeros((4 * H, 4 * W, 3), np.uint8)
    return [
        RgbExposure(stream_id=stream_id, seq=first_seq + i, frame_id=first_seq + i,
                    start_ns=int(index_to_time(f, t0_ns, RATE_HZ)) - offset_ns,
                    duration_ns=duration_frames * PERIOD_NS, image=image + i % 256)
        for i, f in enumerate(first_frames)
    ]


def _due_ns(message, offset_ns=0):
    """When a live rig publishes it: a block after its last frame, an exposure when it ends."""
    if isinstance(message, SpikeBlock):
        return int(index_to_time(message.stop_index - 1, message.t0_ns, RATE_HZ))
    return message.start_ns + offset_ns + message.duration_ns


def _live(blocks, exposures, offset_ns=0):
    events = [(_due_ns(b), 0, b) for b in blocks] + [(_due_ns(e, offset_ns), 1, e) for e in exposures]
    return [(t, m) for t, _, m in sorted(events, key=lambda x: (x[0], x[1]))]


def _run(sync, events):
    jobs = []
    for now, message in events:
        jobs += sync.handle(message, now)
    return jobs


def _check_job(job, packed, exposure, offset_ns=0, k=7):
    window = exposure_window(exposure.start_ns + offset_ns, exposure.duration_ns, T0_NS, RATE_HZ, k, MARGIN)
    assert job.exposure_id == exposure.frame_id
    assert job.first_index == window.window_first
    assert np.array_equal(job.packed, packed[window.window_first : window.window_stop])
    assert np.array_equal(job.centers, window.centers)
    assert np.array_equal(job.timestamps_ns, window.timestamps_ns)
    assert np.array_equal(job.local_centers, window.centers - window.window_first)
    assert job.image is exposure.image or np.array_equal(job.image, exposure.image)


def test_complete_overlapping_windows_carry_the_exact_frames():
    packed = _frames(400)
    # back to back: windows [10, 61) and [43, 94) ... overlap by 18 frames
    exposures = _exposures(range(20, 340, 33), duration_frames=30)
    sync = Synchroniser(SyncConfig(margin_frames=MARGIN))
    jobs = _run(sync, _live(_blocks(packed), exposures))
    assert [j.exposure_id for j in jobs] == [e.frame_id for e in exposures]
    for job, exposure in zip(jobs, exposures):
        _check_job(job, packed, exposure)
        assert job.ready_ns >= job.received_ns
    c = sync.counters
    assert (c.exposures_done, c.exposures_skipped, c.gaps, c.duplicates, c.late, c.malformed) == (
        len(exposures), 0, 0, 0, 0, 0)
    assert c.messages == len(_blocks(packed)) + len(exposures)
    assert sync.pending_count == 0


def test_job_image_in_the_library_layout():
    packed = _frames(100)
    (exposure,) = _exposures([30])
    rng = np.random.default_rng(1)
    exposure = RgbExposure(**{**exposure.__dict__, "image": rng.integers(0, 256, (4 * H, 4 * W, 3), dtype=np.uint8)})
    (job,) = _run(Synchroniser(), _live(_blocks(packed), [exposure]))
    image = job.image_float()
    assert image.shape == (3, 4 * H, 4 * W) and image.dtype == np.float32
    assert np.allclose(image, exposure.image.transpose(2, 0, 1) / 255.0)
    out = np.empty_like(image)
    assert job.image_float(out) is out
    with pytest.raises(ConfigError):
        job.image_float(np.empty((3, 2, 2), np.float32))


def test_job_is_emitted_only_once_the_trailing_margin_arrives():
    packed = _frames(64)
    (exposure,) = _exposures([20], duration_frames=20)  # window [10, 51)
    sync = Synchroniser()
    blocks = _blocks(packed, block=1, bit_order="little", flip_rows=False)
    assert sync.handle(exposure, 0) == []  # before any spike: waits
    emitted_at = None
    for block in blocks:
        jobs = sync.handle(block, 1)
        if jobs:
            emitted_at = block.first_index
            _check_job(jobs[0], packed, exposure)
            break
    assert emitted_at == 50  # the last frame of the window


def test_clock_offset_moves_exposures_onto_the_spike_clock():
    packed = _frames(200)
    offset = 123_456_789
    exposures = _exposures([30, 90], offset_ns=offset)
    sync = Synchroniser(SyncConfig(rgb_to_spike_offset_ns=offset))
    jobs = _run(sync, _live(_blocks(packed), exposures, offset))
    assert len(jobs) == 2
    for job, exposure in zip(jobs, exposures):
        _check_job(job, packed, exposure, offset)
        assert job.start_ns == exposure.start_ns  # as received; timestamps_ns are on the spike clock
    # without the offset the same exposures look like they lie before the stream
    plain = Synchroniser()
    assert _run(plain, _live(_blocks(packed), exposures, offset)) == []
    assert plain.counters.skipped_by_reason == {"stream_start": 2}


def test_calibration_mapping_with_drift_replaces_the_offset():
    packed = _frames(400)
    offset, drift = 3_000_000, 0.01  # rgb = t + offset + drift * (t - t0): 1 % fast, so windows slide

    def to_rgb(t):
        return t + offset + int(round(drift * (t - T0_NS)))

    def to_spike(start_ns, duration_ns):
        t = round((start_ns - offset + drift * T0_NS) / (1 + drift))
        return t, round(duration_ns / (1 + drift))

    truth = _exposures([30, 150, 300], duration_frames=30)
    on_rgb = [RgbExposure(**{**e.__dict__, "start_ns": to_rgb(e.start_ns),
                             "duration_ns": to_rgb(e.start_ns + e.duration_ns) - to_rgb(e.start_ns)}) for e in truth]
    sync = Synchroniser(exposure_to_spike_clock=to_spike)
    jobs = _run(sync, [(0, b) for b in _blocks(packed)] + [(1, e) for e in on_rgb])
    assert len(jobs) == 3
    for job, exposure in zip(jobs, truth):
        _check_job(job, packed, RgbExposure(**{**exposure.__dict__, "image": job.image}))
    with pytest.raises(ConfigError, match="not both"):
        Synchroniser(SyncConfig(rgb_to_spike_offset_ns=5), exposure_to_spike_clock=to_spike)


def test_sequence_gap_skips_exactly_the_exposures_that_need_the_lost_frames():
    packed = _frames(400)
    exposures = _exposures([20, 120, 220, 320], duration_frames=40)  # windows [10,71) [110,171) [210,271) ...
    blocks = _blocks(packed, block=8)
    lost = [b for b in blocks if b.first_index == 128]  # frames 128..135, inside exposure 1's window only
    sync = Synchroniser()
    jobs = _run(sync, _live([b for b in blocks if b not in lost], exposures))
    assert [j.exposure_id for j in jobs] == [0, 2, 3]
    for job in jobs:
        _check_job(job, packed, exposures[job.exposure_id])
    c = sync.counters
    assert (c.gaps, c.exposures_skipped, c.skipped_by_reason) == (1, 1, {"gap": 1})


def test_frame_jump_without_sequence_gap_counts_as_a_gap():
    packed = _frames(200)
    blocks = _blocks(packed, block=10)
    # the camera skipped frames 60..69 but kept numbering its messages
    kept = [b for b in blocks if b.first_index != 60]
    renumbered = [SpikeBlock(**{**b.__dict__, "seq": i}) for i, b in enumerate(kept)]
    exposures = _exposures([20, 100], duration_frames=30)  # [10,61) needs frame 60
    sync = Synchroniser()
    jobs = _run(sync, _live(renumbered, exposures))
    assert [j.exposure_id for j in jobs] == [1]
    assert sync.counters.gaps == 1 and sync.counters.skipped_by_reason == {"gap": 1}


def test_duplicates_are_counted_and_change_nothing():
    packed = _frames(200)
    blocks = _blocks(packed)
    exposures = _exposures([20, 100])
    events = _live(blocks, exposures)
    doubled = []
    for now, message in events:
        doubled += [(now, message), (now, message)]
    sync = Synchroniser()
    jobs = _run(sync, doubled)
    assert [j.exposure_id for j in jobs] == [0, 1]
    for job in jobs:
        _check_job(job, packed, exposures[job.exposure_id])
    assert sync.counters.duplicates == len(blocks) + len(exposures)
    assert sync.counters.gaps == 0 and sync.counters.exposures_done == 2


def test_exposure_with_a_new_sequence_number_but_a_known_frame_id_is_a_duplicate():
    packed = _frames(120)
    (exposure,) = _exposures([20])
    again = RgbExposure(**{**exposure.__dict__, "seq": 1})
    sync = Synchroniser()
    jobs = _run(sync, _live(_blocks(packed), [exposure]) + [(10**12, again)])
    assert len(jobs) == 1 and sync.counters.duplicates == 1 and sync.counters.exposures_received == 1


def test_out_of_order_block_fills_its_hole():
    packed = _frames(200)
    blocks = _blocks(packed, block=8)
    swapped = blocks[:]
    swapped[5], swapped[6] = swapped[6], swapped[5]  # frames 40..47 arrive after 48..55
    exposures = _exposures([30, 120])
    sync = Synchroniser()
    events = [(i, b) for i, b in enumerate(swapped)] + [(10**9, e) for e in exposures]
    jobs = _run(sync, events)
    assert [j.exposure_id for j in jobs] == [0, 1]
    for job in jobs:
        _check_job(job, packed, exposures[job.exposure_id])
    c = sync.counters
    assert (c.out_of_order, c.gaps, c.exposures_skipped) == (1, 1, 0)  # the jump was seen as a gap first


def test_block_older_than_the_ring_is_late_and_dropped():
    packed = _frames(400)
    blocks = _blocks(packed, block=8)
    config = SyncConfig(max_ring_frames=64, reorder_window_messages=64)
    sync = Synchroniser(config)
    late = blocks[1]  # frames 8..15 arrive after all the others, 384 frames late
    events = [(i, b) for i, b in enumerate(blocks) if b is not late] + [(999, late)]
    _run(sync, events)
    c = sync.counters
    assert c.out_of_order == 1 and c.late == 1 and c.spike_frames_dropped == 8
    assert c.gaps == 1


def test_exposure_whose_spikes_never_arrive_is_skipped_after_the_timeout():
    packed = _frames(100)
    exposures = _exposures([20, 200])  # the second needs frames the stream never sends
    timeout = 50_000_000
    sync = Synchroniser(SyncConfig(exposure_timeout_ns=timeout))
    jobs = _run(sync, _live(_blocks(packed), exposures))
    assert [j.exposure_id for j in jobs] == [0]
    arrived = _due_ns(exposures[1])
    assert sync.poll(arrived + timeout - 1) == [] and sync.pending_count == 1
    assert sync.poll(arrived + timeout) == [] and sync.pending_count == 0
    assert sync.counters.skipped_by_reason == {"timeout": 1}


def test_exposure_before_any_spike_waits_then_times_out():
    (exposure,) = _exposures([20])
    sync = Synchroniser(SyncConfig(exposure_timeout_ns=10))
    assert sync.handle(exposure, 100) == [] and sync.pending_count == 1
    assert sync.poll(110) == [] and sync.counters.skipped_by_reason == {"timeout": 1}


def test_heartbeat_reveals_tail_loss_without_waiting_for_the_timeout():
    packed = _frames(120)
    blocks = _blocks(packed, block=8)  # 15 blocks, seq 0..14
    exposures = _exposures([20, 70], duration_frames=20)  # windows [10,51) [60,101)
    kept = blocks[:10]  # frames 0..79 arrive; 80..119 are lost at the tail (PUB dropped them)
    sync = Synchroniser()
    jobs = _run(sync, _live(kept, exposures))
    assert [j.exposure_id for j in jobs] == [0] and sync.pending_count == 1
    heartbeat = Heartbeat(stream_id=SPIKE_ID, stream_kind=Kind.SPIKE_BLOCK, last_seq=14, position=120, clock_ns=0)
    assert sync.handle(heartbeat, 10**9) == []
    c = sync.counters
    assert c.gaps == 5 and c.skipped_by_reason == {"gap": 1} and sync.pending_count == 0
    # the next block continues the sequence: in order, no further gap
    more = _blocks(_frames(8), first_seq=15, first_index=120)
    sync.handle(more[0], 10**9)
    assert c.gaps == 5 and c.out_of_order == 0


def test_rgb_heartbeat_counts_lost_exposures():
    packed = _frames(120)
    exposures = _exposures([20, 70])
    sync = Synchroniser()
    _run(sync, _live(_blocks(packed), exposures[:1]))
    sync.handle(Heartbeat(stream_id=RGB_ID, stream_kind=Kind.RGB_EXPOSURE, last_seq=1, position=1, clock_ns=0), 0)
    assert sync.counters.gaps == 1
    # a heartbeat of a stream we never heard from is ignored
    sync.handle(Heartbeat(stream_id=999, stream_kind=Kind.SPIKE_BLOCK, last_seq=50, position=9999, clock_ns=0), 0)
    assert sync.counters.gaps == 1


def test_publisher_restart_with_a_new_stream_id_and_clock():
    packed_a, packed_b = _frames(200, seed=1), _frames(200, seed=2)
    t0_b = T0_NS + 10**10
    run_a = _live(_blocks(packed_a, stream_id=1), _exposures([20, 100], stream_id=5))
    run_b = _live(_blocks(packed_b, stream_id=2, t0_ns=t0_b), _exposures([20, 100], stream_id=6, t0_ns=t0_b))
    # the new run's blocks and exposures arrive on the same sockets after the old ones
    sync = Synchroniser()
    jobs = _run(sync, run_a + [(t + 10**10, m) for t, m in run_b])
    assert len(jobs) == 4 and sync.counters.restarts == 2  # spike and rgb publishers
    for job in jobs[2:]:
        window = exposure_window(int(index_to_time(job.window.exposure_first, t0_b, RATE_HZ)),
                                 30 * PERIOD_NS, t0_b, RATE_HZ)
        assert np.array_equal(job.packed, packed_b[window.window_first : window.window_stop])
    assert sync.counters.gaps == 0 and sync.counters.duplicates == 0


def test_restart_with_the_same_stream_id_and_sequence_numbers_from_zero():
    packed = _frames(160)
    blocks = _blocks(packed, block=8)
    sync = Synchroniser()
    exposures = _exposures([20, 50, 80], duration_frames=20)
    _run(sync, _live(blocks, exposures))
    assert sync.counters.exposures_done == 3
    # same id, seq 0 again, same t0: the publisher started over (e.g. a replay restarted)
    again = _blocks(packed, block=8)
    jobs = _run(sync, [(10**10 + i, b) for i, b in enumerate(again)])
    assert sync.counters.restarts == 1 and sync.counters.duplicates == 0
    rgb_again = _exposures([100, 120], duration_frames=20)  # frame ids and seq from 0 again: rgb restart too
    jobs += _run(sync, [(2 * 10**10, rgb_again[0]), (2 * 10**10 + 1, rgb_again[1])])
    assert jobs == [] and sync.counters.restarts == 2  # a lone RGB restart waits for the spike one ...
    jobs += sync.poll(2 * 10**10 + 1 + SyncConfig().restart_settle_ns)  # ... for the settle time, then pairs
    assert len(jobs) == 2 and sync.counters.duplicates == 0
    for job, exposure in zip(jobs, rgb_again):
        _check_job(job, packed, exposure)
        assert job.epoch == 1 and job.key == (1, exposure.frame_id)


def test_pending_exposure_waiting_across_a_restart_is_abandoned_never_recomputed():
    """Issue 14.1: a waiting exposure is never combined with the spikes of a stream that replaced its own."""
    packed_a, packed_b = _frames(200, seed=1), _frames(200, seed=2)
    (exposure,) = _exposures([120])
    sync = Synchroniser()
    _run(sync, [(0, b) for b in _blocks(packed_a[:50], stream_id=1)])
    sync.handle(exposure, 1)
    jobs = _run(sync, [(2, b) for b in _blocks(packed_b, stream_id=2)])  # another stream from index 0
    assert jobs == [] and sync.counters.restarts == 1 and sync.pending_count == 0
    assert sync.counters.skipped_by_reason == {"stream_restart": 1}
    c = sync.counters
    assert c.exposures_received == c.exposures_done + c.exposures_skipped + c.exposures_dropped


def test_restart_into_another_stream_in_any_arrival_order_never_mixes_streams():
    """Issue 14.1/14.3: old exposures still in flight after the new spike stream began are skipped, the new
    stream's exposures (same frame ids as the old ones) are all deblurred with the new stream's frames."""
    packed_a, packed_b = _frames(300, seed=1), _frames(300, seed=2)
    run_a = _live(_blocks(packed_a, stream_id=1), _exposures([20, 60, 100, 140, 180], stream_id=5))
    blocks_b = [(t + 5 * PERIOD_NS, m) for t, m in _live(_blocks(packed_b, stream_id=2), [])]
    rgb_b = [(t + 5 * PERIOD_NS, m) for t, m in _live([], _exposures([20, 60, 100, 140, 180], stream_id=6))]
    for old_rgb_late in (False, True):
        sync = Synchroniser()
        events = [e for e in run_a if not (isinstance(e[1], RgbExposure) and e[1].frame_id >= 3)]
        cut = events[-1][0]
        late_a = [(cut + 1, m) for t, m in run_a if isinstance(m, RgbExposure) and m.frame_id >= 3]
        # B's spike stream starts; A's last exposures arrive after it (or before) on the other socket
        b_events = sorted(blocks_b + rgb_b, key=lambda e: e[0])
        timeline = events + (b_events[:3] + late_a + b_events[3:] if old_rgb_late else late_a + b_events)
        jobs = _run(sync, [(cut + i if t <= cut else t + cut, m) for i, (t, m) in enumerate(timeline)])
        jobs += sync.poll(10**12)
        for job in jobs:
            packed = packed_b if job.epoch == 1 else packed_a
            assert np.array_equal(job.packed, packed[job.window.window_first : job.window.window_stop])
        new = [job for job in jobs if job.epoch == 1]
        assert sorted(job.exposure_id for job in new) == [0, 1, 2, 3, 4]  # none lost as a "duplicate"
        c = sync.counters
        assert c.exposures_received == c.exposures_done + c.exposures_skipped + c.exposures_dropped + sync.pending_count


def test_a_lone_rgb_restart_waits_for_the_spike_restart_that_follows_it():
    """The RGB publisher reconnects first: its exposures are held, then bound to the new spike stream."""
    packed_a, packed_b = _frames(200, seed=1), _frames(200, seed=2)
    sync = Synchroniser()
    _run(sync, [(0, b) for b in _blocks(packed_a[:160], stream_id=1)])
    sync.handle(_exposures([5], stream_id=5)[0], 1)  # the first RGB stream
    new_rgb = _exposures([40, 80], stream_id=6)  # would fit stream A's ring: must not use it
    jobs = _run(sync, [(2, new_rgb[0]), (3, new_rgb[1])])
    assert jobs == [] and sync.pending_count == 2
    jobs = _run(sync, [(4 + i, b) for i, b in enumerate(_blocks(packed_b, stream_id=2))])
    assert len(jobs) == 2
    for job in jobs:
        assert np.array_equal(job.packed, packed_b[job.window.window_first : job.window.window_stop])


def test_one_forged_sequence_number_neither_inflates_gaps_nor_restarts_the_stream():
    """Issue 14.4: a jump far beyond any real loss is malformed unless the stream's next message confirms it."""
    packed = _frames(200)
    blocks = _blocks(packed)
    exposures = _exposures([20, 60, 100, 140])
    events = _live(blocks, exposures)
    at = len(events) // 2
    next_seq = 1 + max(m.seq for _, m in events[:at] if isinstance(m, SpikeBlock))
    forged = [
        SpikeBlock(**{**blocks[3].__dict__, "seq": 10**18}),  # sequence jump
        SpikeBlock(**{**blocks[3].__dict__, "seq": 0}),  # "restart"
        SpikeBlock(**{**blocks[3].__dict__, "seq": next_seq, "first_index": 10**15}),  # frame counter leap
        Heartbeat(stream_id=SPIKE_ID, stream_kind=Kind.SPIKE_BLOCK, last_seq=10**18, position=10, clock_ns=0),
        Heartbeat(stream_id=SPIKE_ID, stream_kind=Kind.SPIKE_BLOCK, last_seq=4, position=10**15, clock_ns=0),
        RgbExposure(**{**exposures[1].__dict__, "seq": 10**18, "frame_id": 77}),
        Heartbeat(stream_id=RGB_ID, stream_kind=Kind.RGB_EXPOSURE, last_seq=10**18, position=0, clock_ns=0),
    ]
    for i, message in enumerate(forged):
        sync = Synchroniser()
        jobs = _run(sync, events[:at] + [(events[at][0], message)] + events[at:])
        c = sync.counters
        assert len(jobs) == 4 and c.restarts == 0 and c.gaps == 0, (i, c)
        assert c.malformed == 1 and c.exposures_skipped == 0, (i, c)
        for job, exposure in zip(jobs, exposures):
            _check_job(job, packed, exposure)


def test_a_large_jump_confirmed_by_the_next_message_is_taken_as_a_restart():
    packed = _frames(100)
    sync = Synchroniser(SyncConfig(max_jump_messages=100))
    _run(sync, [(i, b) for i, b in enumerate(_blocks(packed[:40]))])
    later = _blocks(packed, first_seq=10**6)[5:]  # the same stream, a million messages later
    _run(sync, [(100 + i, b) for i, b in enumerate(later)])
    c = sync.counters
    assert c.restarts == 1 and c.gaps == 0 and c.malformed == 0


def test_exposure_before_the_first_received_frame_is_skipped():
    packed = _frames(200)
    blocks = [b for b in _blocks(packed) if b.first_index >= 40]  # joined the stream late
    renumbered = [SpikeBlock(**{**b.__dict__, "seq": i}) for i, b in enumerate(blocks)]
    exposures = _exposures([35, 100])  # window of the first starts at frame 25
    sync = Synchroniser()
    jobs = _run(sync, _live(renumbered, exposures))
    assert [j.exposure_id for j in jobs] == [1]
    assert sync.counters.skipped_by_reason == {"stream_start": 1} and sync.counters.gaps == 0


def test_exposure_arriving_after_its_frames_left_the_ring_is_late():
    packed = _frames(400)
    (exposure,) = _exposures([20])
    sync = Synchroniser(SyncConfig(max_ring_frames=100))
    _run(sync, [(i, b) for i, b in enumerate(_blocks(packed))])
    assert sync.handle(exposure, 10**9) == []
    c = sync.counters
    assert c.late == 1 and c.skipped_by_reason == {"late": 1}


def test_window_longer_than_the_ring_is_skipped_at_once():
    packed = _frames(64)
    (exposure,) = _exposures([20], duration_frames=200)
    sync = Synchroniser(SyncConfig(max_ring_frames=64))
    _run(sync, [(0, _blocks(packed)[0])])
    sync.handle(exposure, 1)
    assert sync.counters.skipped_by_reason == {"window_too_long": 1}


def test_flood_of_exposures_keeps_the_pending_queue_bounded():
    sync = Synchroniser(SyncConfig(max_pending_exposures=4, exposure_timeout_ns=10**15))
    sync.handle(_blocks(_frames(8))[0], 0)
    exposures = _exposures(range(1000, 1000 + 50 * 40, 40))  # spikes for them never come
    for i, exposure in enumerate(exposures):
        sync.handle(exposure, i)
        assert sync.pending_count <= 4
    c = sync.counters
    assert c.exposures_dropped == len(exposures) - 4 and c.exposures_skipped == 0


def test_flood_of_spikes_keeps_the_ring_bounded_and_counts_evicted_needed_frames():
    config = SyncConfig(max_ring_frames=128, exposure_timeout_ns=10**15)
    sync = Synchroniser(config)
    blocks = _blocks(_frames(2000), block=16)
    (exposure,) = _exposures([200], duration_frames=50)  # window [190, 261)
    sync.handle(blocks[0], 0)
    sync.handle(exposure, 0)  # arrives early; then the stream runs past it ...
    frame_bytes = H * W // 8
    # ... but frames 192..207 are lost, so the window never completes; the ring pushes it out
    for i, block in enumerate(blocks[1:], start=1):
        if block.first_index != 192:
            sync.handle(block, i)
        assert sync.ring_capacity == 128 and sync.ring_nbytes <= (2 * 128 + 16) * frame_bytes
    c = sync.counters
    assert c.skipped_by_reason == {"gap": 1}
    assert c.spike_frames_received == 2000 - 16


def test_ring_eviction_of_a_waiting_window_is_counted():
    sync = Synchroniser(SyncConfig(max_ring_frames=64, exposure_timeout_ns=10**15))
    packed = _frames(400)
    blocks = _blocks(packed, block=8)
    (exposure,) = _exposures([30], duration_frames=20)  # window [20, 61)
    sync.handle(exposure, 0)
    # the stream starts before the window, a later block is lost, then a flood pushes the window out
    for i, block in enumerate(blocks):
        if block.first_index != 56:
            sync.handle(block, i)
    assert sync.counters.skipped_by_reason == {"gap": 1}
    sync2 = Synchroniser(SyncConfig(max_ring_frames=64, exposure_timeout_ns=10**15))
    sync2.handle(_exposures([30], duration_frames=20)[0], 0)  # window [20, 61)
    for block in blocks[:5]:  # frames 0..39 arrive, then the stream jumps to 160: 20..39 leave the ring
        sync2.handle(block, 1)
    sync2.handle(blocks[20], 2)
    assert sync2.counters.skipped_by_reason == {"evicted": 1}
    assert sync2.counters.spike_frames_dropped == 20


def test_malformed_messages_are_counted_by_kind_and_reason_and_never_raise():
    packed = _frames(120)
    exposures = _exposures([20])
    sync = Synchroniser()
    good = [encode(m) for _, m in _live(_blocks(packed), exposures)]
    bad = [
        [b"spk", b"garbage", b""],
        [b"x"],
        [good[0][0], good[0][1], bytes(good[0][2])[:-3]],  # truncated spike payload
        [b"rgb", bytes(encode(exposures[0])[1]), b""],  # exposure without its pixels
    ]
    jobs = []
    for i, parts in enumerate(bad + good):
        jobs += sync.feed([bytes(p) for p in parts], i)
    assert len(jobs) == 1
    _check_job(jobs[0], packed, exposures[0])
    c = sync.counters
    assert c.malformed == 4 and c.messages == 4 + len(good)
    assert c.malformed_by_reason == {
        "unknown/header_size": 1, "unknown/parts": 1, "spike_block/truncated": 1, "rgb_exposure/truncated": 1,
    }
    assert set(c.as_dict()) >= {"messages", "malformed", "gaps", "late", "duplicates", "exposures_done",
                                "exposures_skipped", "exposures_dropped"}
    assert all(isinstance(v, int) for v in c.as_dict().values())


@pytest.mark.parametrize(
    "field, value",
    [("k", 0), ("margin_frames", 9), ("exposure_timeout_ns", 0), ("max_pending_exposures", 0),
     ("max_ring_frames", 21), ("max_ring_bytes", 1000), ("rgb_to_spike_offset_ns", 1.5), ("k", True)],
)
def test_config_is_validated(field, value):
    with pytest.raises(ConfigError, match=field):
        SyncConfig(**{field: value})


def test_overlapping_blocks_cannot_pin_unbounded_memory():
    # a misbehaving publisher: every block re-sends 63 old frames and 1 new one
    sync = Synchroniser(SyncConfig(max_ring_frames=64, exposure_timeout_ns=10**15))
    packed = _frames(600)
    for seq in range(500):
        block = SpikeBlock(stream_id=1, seq=seq, first_index=seq, t0_ns=T0_NS, rate_hz=RATE_HZ, height=H, width=W,
                           packed=packed[seq : seq + 64])
        sync.handle(block, seq)
        assert sync.ring_nbytes <= (2 * 64 + 64) * H * W // 8
    (exposure,) = _exposures([520], duration_frames=10)  # window [510, 541) inside the ring [499, 563)
    jobs = sync.handle(exposure, 10**6)
    assert len(jobs) == 1
    _check_job(jobs[0], packed, exposure)


@pytest.mark.parametrize("seed", range(5))
def test_ring_read_matches_a_dictionary_reference(seed):
    from spikereveal.stream.sync import _SpikeRing

    rng = np.random.default_rng(seed)
    packed = _frames(300, seed)
    first = SpikeBlock(stream_id=1, seq=0, first_index=0, t0_ns=0, rate_hz=RATE_HZ, height=H, width=W,
                       packed=packed[:1])
    ring = _SpikeRing(first, capacity=50)
    reference = {}
    for _ in range(200):  # random, overlapping, out-of-order writes
        start = int(rng.integers(0, 290))
        n = int(rng.integers(1, 11))
        frames = packed[start : start + n].copy()
        ring.write(start, frames)
        for i in range(n):
            reference = {k: v for k, v in reference.items() if (k - (start + i)) % 50 != 0}
            reference[start + i] = packed[start + i]
        lo = int(rng.integers(0, 290))
        hi = lo + int(rng.integers(1, 12))
        got = ring.read(lo, hi)
        if all(k in reference for k in range(lo, hi)):
            assert got is not None and np.array_equal(got, np.stack([reference[k] for k in range(lo, hi)]))
        else:
            assert got is None
        assert np.array_equal(ring.present(lo, hi), [k in reference for k in range(lo, hi)])
        assert ring.frames_held <= 2 * 50 + 10


def test_absurd_but_well_formed_times_are_skipped_not_raised():
    sync = Synchroniser(SyncConfig(max_ring_frames=64))
    sync.handle(_blocks(_frames(8))[0], 0)
    image = np.zeros((4, 4, 3), np.uint8)
    extreme = [
        (2**63 - 10, 10**9),  # end overflows int64
        (-(2**63), 10),  # start minus t0 overflows
        (T0_NS, 2**62),  # a window of ~4.6e12 frames
    ]
    for i, (start, duration) in enumerate(extreme):
        sync.handle(RgbExposure(stream_id=RGB_ID, seq=i, frame_id=i, start_ns=start, duration_ns=duration,
                                image=image), i)
    assert sync.counters.skipped_by_reason == {"bad_time": 2, "window_too_long": 1}
    sync.handle(Heartbeat(stream_id=SPIKE_ID, stream_kind=Kind.SPIKE_BLOCK, last_seq=2**62, position=2**62,
                          clock_ns=0), 5)
    assert sync.counters.gaps == 0 and sync.counters.malformed_by_reason == {"heartbeat/jump": 1}
    assert sync.pending_count == 0


@pytest.mark.parametrize("seed", range(4))
def test_faulty_traffic_never_yields_a_wrong_frame_and_stays_bounded(seed):
    """A rig stream with random drops, duplicates, swaps, frame jumps, restarts and stray heartbeats."""
    rng = np.random.default_rng(seed)
    config = SyncConfig(max_ring_frames=96, max_pending_exposures=5, exposure_timeout_ns=2000, restart_settle_ns=20)
    sync = Synchroniser(config)
    image = np.zeros((4, 4, 3), np.uint8)
    pool = _frames(64, seed)  # frame i always carries pool[i % 64]: any wrong frame would show
    traffic = []
    stream, seq, rgb_seq, index, frame_id = 1, 0, 0, 0, 0
    for _ in range(1500):
        if rng.random() < 0.01:  # publisher restart: new id, numbering from 0, index jumps
            stream, seq, index = stream + 1, 0, index + int(rng.integers(0, 50))
        n = int(rng.integers(1, 12))
        if rng.random() < 0.05:  # the camera skipped frames
            index += int(rng.integers(1, 20))
        bit_order, flip_rows = ("little", "big")[int(rng.integers(2))], bool(rng.integers(2))
        frames = pool[(index + np.arange(n)) % 64]
        traffic.append(SpikeBlock(stream_id=stream, seq=seq, first_index=index, t0_ns=T0_NS, rate_hz=RATE_HZ,
                                  height=H, width=W, packed=from_canonical(frames, H, W, bit_order, flip_rows),
                                  bit_order=bit_order, flip_rows=flip_rows))
        seq, index = seq + 1, index + n
        if rng.random() < 0.15:  # an exposure that just ended
            duration = int(rng.integers(1, 40))
            start = index - duration - int(rng.integers(0, 30))
            traffic.append(RgbExposure(stream_id=99, seq=rgb_seq, frame_id=frame_id, image=image,
                                       start_ns=int(index_to_time(start, T0_NS, RATE_HZ)),
                                       duration_ns=duration * PERIOD_NS))
            rgb_seq, frame_id = rgb_seq + 1, frame_id + 1
        if rng.random() < 0.05:
            traffic.append(Heartbeat(stream_id=stream, stream_kind=Kind.SPIKE_BLOCK,
                                     last_seq=seq - 1 + int(rng.integers(0, 2)),
                                     position=index + int(rng.integers(0, 3)), clock_ns=0))
    faulty = []
    for message in traffic:
        roll = rng.random()
        if roll < 0.05:
            continue  # lost
        faulty.append(message)
        if roll < 0.10:
            faulty.append(message)  # duplicated
        elif roll < 0.15 and len(faulty) > 2:
            faulty[-1], faulty[-2] = faulty[-2], faulty[-1]  # out of order
    for now, message in enumerate(faulty):
        for job in sync.handle(message, now):
            index = np.arange(job.window.window_first, job.window.window_stop)
            assert np.array_equal(job.packed, pool[index % 64])
        assert sync.pending_count <= 5
        assert sync.ring_nbytes <= (2 * 96 + 12) * H * W // 8
    c = sync.counters
    assert c.exposures_done > 20 and c.exposures_skipped > 0
    assert c.gaps > 0 and c.duplicates > 0 and c.out_of_order > 0 and c.restarts > 0
    assert c.exposures_received == c.exposures_done + c.exposures_skipped + c.exposures_dropped + sync.pending_count


def test_job_feeds_the_ldn_input_kernel():
    extract = pytest.importorskip("spikereveal.kernels.extract")
    from spikereveal.kernels.packing import unpack_frames

    packed = _frames(200)
    (exposure,) = _exposures([40], duration_frames=60)
    (job,) = _run(Synchroniser(), _live(_blocks(packed), [exposure]))
    ldn = extract.extract_ldn_input(job.packed, job.spike_height, job.spike_width, job.centers,
                                    first_index=job.first_index)
    frames = unpack_frames(packed, H, W).astype(np.float32)
    for k, center in enumerate(job.centers):
        assert np.array_equal(ldn[k], frames[center - 10 : center + 11])
