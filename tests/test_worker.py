"""Worker: bounded job queue and its drop policy, window cutting, the inference thread under a flood, jobs and
results on the wire, and the collector's re-ordering. Fake runners: no model, no sockets, no sleeps."""

from __future__ import annotations

import threading
import weakref

import numpy as np
import pytest

from engines_support import reference_spike_windows
from stream_support import FakeRunner, fake_network
from spikereveal.engines.runners import InputShape
from spikereveal.errors import ConfigError
from spikereveal.kernels.extract import SPIKE_LEVEL
from spikereveal.kernels.packing import pack_frames
from spikereveal.kernels.timing import exposure_window, output_timestamps
from spikereveal.stream.collector import ResultCollector
from spikereveal.stream.protocol import ProtocolError
from spikereveal.stream.sync import ReadyJob
from spikereveal.stream.jobs import InferenceThread, JobQueue
from spikereveal.stream.stage import ExposureProcessor, ReusableOutputs
from spikereveal.stream.wire import decode_job, decode_result, encode_job, encode_result

SPIKE_H, SPIKE_W = 16, 24
RATE_HZ = 1000.0
K = 3


def reference_output(job: ReadyJob) -> np.ndarray:
    spikes = reference_spike_windows(job.packed, job.centers, job.first_index)
    return fake_network(job.image[None], spikes)


def make_job(exposure_id: int, seed: int = 0, start_frame: int = 15, duration_frames: int = 20) -> ReadyJob:
    rng = np.random.default_rng(seed + exposure_id)
    start_ns = int(start_frame * 1e9 / RATE_HZ)
    duration_ns = int(duration_frames * 1e9 / RATE_HZ)
    window = exposure_window(start_ns, duration_ns, 0, RATE_HZ, K)
    frames = window.window_stop - window.window_first
    return ReadyJob(
        exposure_id=exposure_id, start_ns=start_ns, duration_ns=duration_ns,
        image=rng.integers(0, 256, (4 * SPIKE_H, 4 * SPIKE_W, 3), dtype=np.uint8),
        packed=pack_frames(rng.random((frames, SPIKE_H, SPIKE_W)) < 0.3), window=window, spike_height=SPIKE_H,
        spike_width=SPIKE_W, received_ns=1000 * exposure_id, ready_ns=1000 * exposure_id + 10,
    )


def loaded_runner(gate=None) -> FakeRunner:
    runner = FakeRunner(InputShape(K, 4 * SPIKE_H, 4 * SPIKE_W), gate)
    runner.options = runner.options.__class__(warmup_runs=0)
    return runner.load()


# -- the queue ---------------------------------------------------------------------------------------------
def test_queue_drops_the_oldest_when_full_and_counts_it():
    queue = JobQueue(capacity_jobs=2)
    jobs = [make_job(i) for i in range(5)]
    dropped = [queue.put(job) for job in jobs]
    assert dropped[:2] == [None, None]
    assert [d.exposure_id for d in dropped[2:]] == [0, 1, 2]
    assert queue.dropped == 3 and len(queue) == 2 and queue.max_depth == 2
    assert [queue.get_nowait().exposure_id, queue.get_nowait().exposure_id] == [3, 4]
    assert queue.get(timeout_s=0) is None


def test_queue_drop_newest_policy_keeps_the_first_jobs():
    queue = JobQueue(capacity_jobs=2, when_full="drop_newest")
    for i in range(4):
        queue.put(make_job(i))
    assert queue.dropped == 2 and list(queue.dropped_ids) == [2, 3]
    assert [queue.get_nowait().exposure_id for _ in range(2)] == [0, 1]


@pytest.mark.parametrize("kwargs", [{"capacity_jobs": 0}, {"capacity_jobs": True}, {"when_full": "block"}])
def test_queue_config_is_validated(kwargs):
    with pytest.raises(ConfigError):
        JobQueue(**kwargs)


def test_closed_queue_hands_out_what_is_left_then_none():
    queue = JobQueue(3)
    queue.put(make_job(0))
    queue.close()
    assert queue.get().exposure_id == 0 and queue.get() is None
    with pytest.raises(ConfigError):
        queue.put(make_job(1))


# -- one exposure ---------------------------------------------------------------------------------------------
def test_processor_cuts_the_window_like_the_slow_reference():
    processor = ExposureProcessor(loaded_runner())
    for i in range(3):
        job = make_job(i, seed=7)
        result = processor.process(job)
        assert np.array_equal(result.sharp, reference_output(job))
        assert result.timestamps_ns.tolist() == output_timestamps(job.start_ns, job.duration_ns, K).tolist()
        assert result.exposure_id == i and result.received_ns == job.received_ns
        assert min(result.prepare_ns, result.inference_ns, result.postprocess_ns) >= 0


def test_processor_reuses_its_input_buffers():
    processor = ExposureProcessor(loaded_runner())
    image, spikes = processor.prepare(make_job(0))
    image2, spikes2 = processor.prepare(make_job(1))
    assert image is image2 and spikes is spikes2
    assert image.dtype == spikes.dtype == np.uint8 and set(np.unique(spikes)) <= {0, SPIKE_LEVEL}


def test_processor_reuses_an_output_only_once_nothing_holds_it():
    processor = ExposureProcessor(loaded_runner())
    jobs = [make_job(i, seed=3) for i in range(6)]
    held = [processor.process(job) for job in jobs]  # more results alive than the pool has arrays
    assert len({id(result.sharp) for result in held}) == len(held)
    for job, result in zip(jobs, held):
        assert np.array_equal(result.sharp, reference_output(job))
    assert processor.outputs.allocated == len(held) - processor.outputs.capacity

    pooled = weakref.ref(held[0].sharp)
    frame = held[1].sharp[2]  # a view keeps its array out of the pool
    expected_frame = reference_output(jobs[1])[2]
    del held, result
    again = [processor.process(job) for job in jobs[2:4]]
    assert again[0].sharp is pooled()
    assert all(item.sharp is not frame.base for item in again)
    assert np.array_equal(frame, expected_frame)
    for job, result in zip(jobs[2:4], again):
        assert np.array_equal(result.sharp, reference_output(job))


def test_float_output_is_the_8_bit_result_in_reused_arrays():
    processor = ExposureProcessor(loaded_runner(), output_pixel_format="bgr_f32")
    job = make_job(0, seed=5)
    result = processor.process(job)
    expected = reference_output(job).transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    assert result.sharp.dtype == np.float32 and np.array_equal(result.sharp, expected)
    pooled = weakref.ref(result.sharp)
    del result
    assert processor.process(make_job(1, seed=5)).sharp is pooled()


@pytest.mark.parametrize("capacity", [0, True, 1.5])
def test_reusable_outputs_capacity_is_validated(capacity):
    with pytest.raises(ConfigError):
        ReusableOutputs((2, 2), np.uint8, capacity)


def test_processor_rejects_a_job_for_another_geometry():
    processor = ExposureProcessor(loaded_runner())
    job = make_job(0)
    other = ReadyJob(**{**job.__dict__, "spike_height": 8, "spike_width": 48})
    with pytest.raises(ConfigError, match="loaded for"):
        processor.process(other)


# -- the inference thread under a flood ------------------------------------------------------------------------
def test_flood_drops_the_oldest_waiting_jobs_and_memory_stays_bounded():
    gate = threading.Event()
    runner = loaded_runner(gate)
    processor = ExposureProcessor(runner)
    queue = JobQueue(capacity_jobs=2)
    delivered = []
    thread = InferenceThread(queue, processor.process, lambda job, result: delivered.append(result)).start()
    try:
        queue.put(make_job(0))
        assert runner.started.acquire(timeout=30)  # job 0 is in inference, the queue is empty again
        flood = 200
        for i in range(1, flood + 1):
            queue.put(make_job(i))
            assert len(queue) <= 2  # bounded at every step
        assert queue.dropped == flood - 2
        assert queue.max_depth == 2
        gate.set()
        assert thread.wait_idle(30)
    finally:
        gate.set()
        queue.close()
        thread.stop()
    # the one in progress, then the two newest: drop-oldest keeps what a live viewer wants
    assert [r.exposure_id for r in delivered] == [0, flood - 1, flood]
    assert thread.processed == 3 and thread.failed == 0


def test_failing_job_is_counted_and_the_thread_goes_on():
    processor = ExposureProcessor(loaded_runner())
    queue = JobQueue(4)
    delivered = []
    bad = ReadyJob(**{**make_job(0).__dict__, "spike_height": 8, "spike_width": 48})
    thread = InferenceThread(queue, processor.process, lambda job, result: delivered.append(result)).start()
    try:
        queue.put(bad)
        queue.put(make_job(1))
        assert thread.wait_idle(30)
    finally:
        queue.close()
        thread.stop()
    assert thread.failed == 1 and [r.exposure_id for r in delivered] == [1]


# -- jobs and results on the wire ------------------------------------------------------------------------------
def test_job_round_trip_is_self_contained():
    job = make_job(5)
    parts = [bytes(p) for p in encode_job(job)]
    back = decode_job(parts)
    for name in ("exposure_id", "start_ns", "duration_ns", "first_index", "spike_height", "spike_width",
                 "received_ns", "ready_ns"):
        assert getattr(back, name) == getattr(job, name), name
    assert np.array_equal(back.packed, job.packed) and np.array_equal(back.image, job.image)
    assert np.array_equal(back.centers, job.centers) and np.array_equal(back.timestamps_ns, job.timestamps_ns)
    assert back.window.window_stop == job.window.window_stop
    processor = ExposureProcessor(loaded_runner())
    assert np.array_equal(processor.process(back).sharp, reference_output(job))


def test_results_are_stamped_on_the_spike_clock_of_the_jobs_window():
    """With a clock calibration a job's start_ns is the exposure as received (RGB clock, here 3 ms ahead) and
    its window's timestamps are on the spike clock: the sharp frames carry the window's times, and the
    collector accepts exactly those."""
    import dataclasses

    from spikereveal.stream.collector import result_matches

    job = make_job(2)
    on_rgb_clock = dataclasses.replace(job, start_ns=job.start_ns + 3_000_000)
    result = ExposureProcessor(loaded_runner()).process(on_rgb_clock)
    assert result.timestamps_ns.tolist() == job.timestamps_ns.tolist()
    assert result.timestamps_ns.tolist() != output_timestamps(on_rgb_clock.start_ns, job.duration_ns, K).tolist()
    wire = decode_result([bytes(p) for p in encode_result(result, worker_id=1)])
    assert result_matches(on_rgb_clock, wire) is None
    shifted = decode_result([bytes(p) for p in encode_result(
        dataclasses.replace(result, timestamps_ns=result.timestamps_ns + 3_000_000), worker_id=1)])
    assert result_matches(on_rgb_clock, shifted) == "timestamps"


def test_result_round_trip_and_failure_marker():
    processor = ExposureProcessor(loaded_runner())
    result = processor.process(make_job(3))
    wire = decode_result([bytes(p) for p in encode_result(result, worker_id=4)])
    assert wire.ok and wire.exposure_id == 3 and wire.worker_id == 4
    assert np.array_equal(wire.sharp, result.sharp) and np.array_equal(wire.timestamps_ns, result.timestamps_ns)
    assert wire.inference_ns == result.inference_ns
    failed = decode_result(encode_result(None, worker_id=1, exposure_id=9, k=K))
    assert not failed.ok and failed.exposure_id == 9


def _corrupt(parts, index, value):
    parts = [bytes(p) for p in parts]
    parts[index] = value
    return parts


@pytest.mark.parametrize("mutate", [
    lambda p: p[:4],
    lambda p: _corrupt(p, 0, b"jab"),
    lambda p: _corrupt(p, 1, p[1][:-1]),
    lambda p: _corrupt(p, 1, b"XXXX" + p[1][4:]),
    lambda p: _corrupt(p, 2, p[2][:-1]),
    lambda p: _corrupt(p, 3, p[3] + b"\0"),
    lambda p: _corrupt(p, 4, p[4][:8]),
    lambda p: [b"", b"", b"", b"", b""],
])
def test_malformed_jobs_raise_protocol_errors(mutate):
    with pytest.raises(ProtocolError):
        decode_job(mutate([bytes(part) for part in encode_job(make_job(1))]))


# -- the collector ------------------------------------------------------------------------------------------------
def _wire(exposure_id, ok=True, worker_id=0):
    processor = ExposureProcessor(loaded_runner())
    if not ok:
        return decode_result(encode_result(None, worker_id, exposure_id, K))
    return decode_result([bytes(p) for p in encode_result(processor.process(make_job(exposure_id)), worker_id)])


def test_collector_releases_results_in_dispatch_order():
    collector = ResultCollector(result_timeout_ns=10**9)
    jobs = [make_job(i) for i in range(3)]
    for job in jobs:
        collector.dispatched(job, 0)
    assert collector.in_flight == 3
    assert collector.received(_wire(2), 10) == []
    assert collector.received(_wire(1), 20) == []
    assert collector.waiting_results == 2
    released = collector.received(_wire(0), 30)
    assert [result.exposure_id for _, result in released] == [0, 1, 2]
    assert collector.in_flight == 0 and collector.waiting_results == 0


def test_collector_counts_a_lost_job_after_the_timeout_and_moves_on():
    collector = ResultCollector(result_timeout_ns=1000)
    for i in range(3):
        collector.dispatched(make_job(i), 0)
    assert collector.received(_wire(1), 10) == []
    assert collector.received(_wire(2, ok=False), 20) == []
    assert collector.release(999) == []
    released = collector.release(1000)  # exposure 0 never came back
    assert [result.exposure_id for _, result in released] == [1]
    assert collector.lost == 1 and collector.failed == 1 and collector.in_flight == 0
    assert collector.received(_wire(0), 2000) == [] and collector.unexpected == 1


# -- the firing-gain alarm ------------------------------------------------------------------------------------------
def _processor_trained_for(trained):
    runner = loaded_runner()
    runner.firing_gain_range = trained  # what an export's or checkpoint's metadata would declare
    return ExposureProcessor(runner)


def test_processor_flags_exposures_outside_the_models_gain_range_and_logs_once(caplog):
    from spikereveal.kernels.sensor import exposure_firing_gain

    jobs = [make_job(i, seed=3) for i in range(3)]
    # 30 % random spikes against random frames (mean gray ~0.5): a gain of about 0.6
    exact = [exposure_firing_gain(j.packed, SPIKE_H, SPIKE_W, j.window, j.image, first_index=j.first_index)
             for j in jobs]
    assert all(0.5 < g < 0.7 for g in exact)
    undeclared = ExposureProcessor(loaded_runner())
    assert all(undeclared.process(j).firing_gain is None and not undeclared.process(j).out_of_domain for j in jobs)

    inside = _processor_trained_for((0.5, 0.8))
    results = [inside.process(j) for j in jobs]
    assert not any(r.out_of_domain for r in results) and inside.out_of_domain == 0
    # the live estimate (every 4th frame, row and column) is close to the exact gain
    assert [r.firing_gain for r in results] == pytest.approx(exact, rel=0.1)

    outside = _processor_trained_for((2.0, 3.0))
    with caplog.at_level("WARNING", logger="spikereveal.stream.worker"):
        results = [outside.process(j) for j in jobs]
    assert all(r.out_of_domain for r in results) and outside.out_of_domain == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "outside the model's trained range 2-3" in warnings[0]
    assert np.array_equal(results[0].sharp, reference_output(jobs[0]))  # the frames are deblurred all the same


def test_the_out_of_domain_flag_crosses_the_wire_and_the_collector():
    processor = _processor_trained_for((2.0, 3.0))
    job = make_job(4)
    wire = decode_result([bytes(p) for p in encode_result(processor.process(job), worker_id=1)])
    assert wire.ok and wire.out_of_domain
    calm = decode_result([bytes(p) for p in encode_result(ExposureProcessor(loaded_runner()).process(job), 1)])
    assert calm.ok and not calm.out_of_domain
    collector = ResultCollector(result_timeout_ns=10**9)
    collector.dispatched(job, 0)
    ((_, result),) = collector.received(wire, 10)
    assert result.out_of_domain


# -- stream epochs (issue 14.1-14.3) -------------------------------------------------------------------------------
def test_the_epoch_crosses_the_wire_both_ways():
    from dataclasses import replace

    job = replace(make_job(5), epoch=3)
    back = decode_job([bytes(p) for p in encode_job(job)])
    assert back.epoch == 3 and back.key == (3, 5)
    result = ExposureProcessor(loaded_runner()).process(back)
    assert result.epoch == 3
    wire = decode_result([bytes(p) for p in encode_result(result, worker_id=0)])
    assert wire.key == (3, 5)
    assert decode_result(encode_result(None, 0, 5, K, epoch=3)).key == (3, 5)


def test_collector_keeps_the_same_exposure_id_of_two_epochs_apart():
    from dataclasses import replace

    processor = ExposureProcessor(loaded_runner())
    old, new = make_job(0), replace(make_job(0, seed=7), epoch=1)
    collector = ResultCollector(result_timeout_ns=10**9)
    collector.dispatched(old, 0)
    collector.dispatched(new, 1)
    new_wire = decode_result([bytes(p) for p in encode_result(processor.process(new), 0)])
    assert collector.received(new_wire, 2) == []  # waits behind the old epoch's exposure 0
    old_wire = decode_result([bytes(p) for p in encode_result(processor.process(old), 0)])
    released = collector.received(old_wire, 3)
    assert [(job.key, result.epoch) for job, result in released] == [((0, 0), 0), ((1, 0), 1)]
    assert np.array_equal(released[1][1].sharp, reference_output(new)) and collector.unexpected == 0


def test_saved_names_are_unique_per_epoch(tmp_path):
    """Issue 14.2: after a restart frame ids start again; nothing is overwritten and frames.csv matches."""
    import csv

    from spikereveal.stream.sinks import FrameSaver

    saver = FrameSaver(tmp_path)
    sharp = np.zeros((K, 8, 8, 3), np.uint8)
    for epoch in (0, 1):
        for exposure_id in range(3):
            saver.save(exposure_id, np.arange(K) + 100 * epoch, sharp + epoch, epoch=epoch)
    saver.close()
    rows = list(csv.reader(open(tmp_path / "frames.csv")))[1:]
    files = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert len(rows) == len(files) == 2 * 3 * K == saver.frames_written
    assert sorted(r[2].split("/")[-1] for r in rows) == files
    assert "000001_02.png" in files and "e1_000001_02.png" in files  # epoch 0 keeps deblur's names


# -- lost workers (issue 14 item 6) ----------------------------------------------------------------------------------
def test_collector_releases_exactly_a_lost_workers_jobs_at_once():
    collector = ResultCollector(result_timeout_ns=10**12)  # the timeout never fires here; policy "drop"
    for worker, exposure in ((0, 0), (1, 1), (0, 2), (1, 3)):
        collector.dispatched(make_job(exposure), 0, worker, b"w%d" % worker)
    collector.taken(0, (0, 0), 1)  # acknowledged or not (2 is not), the worker of each job is known at dispatch
    assert collector.held(b"w0") == collector.held(b"w1") == 2
    assert collector.received(_wire(1, worker_id=1), 2) == []  # held in order behind exposure 0 (worker 0)
    assert collector.received(_wire(3, worker_id=1), 3) == [] and collector.held(b"w1") == 0  # credits back
    assert collector.worker_lost(0, "its process exited", 4, exited=True) == 2  # exposures 0 and 2, not 1 or 3
    assert [r.exposure_id for _, r in collector.release(4)] == [1, 3]
    assert collector.lost == 2 and collector.requeued == 0 and collector.in_flight == 0
    assert collector.lost_workers == [0] and collector.held(b"w0") == 0
    collector.heard(0, 5)  # a stale beat from the exited worker does not bring it back
    assert 0 not in collector.last_heard and collector.is_gone(0)


def test_collector_declares_a_silent_worker_lost_after_the_heartbeat_timeout():
    collector = ResultCollector(result_timeout_ns=10**12, heartbeat_timeout_ns=1000)
    collector.heard(0, 0)
    collector.heard(1, 0)
    collector.dispatched(make_job(0), 10, 1, b"w1")
    collector.taken(1, (0, 0), 10)
    collector.heard(0, 900)
    assert collector.silent_workers(1009) == []
    assert collector.silent_workers(1010) == [1]  # heard at 10 (its acknowledgement); worker 0 beat at 900
    collector.worker_lost(1, "silent", 1010)
    assert collector.lost == 1 and collector.release(1010) == []
    collector.heard(1, 2000)  # a remote worker may come back
    assert 1 in collector.last_heard and collector.lost_workers == []


# -- credits, the lost-job policy and the bounded re-ordering (issue 17) ---------------------------------------------
def test_a_lost_workers_fresh_jobs_are_requeued_once_in_their_place_and_stale_ones_dropped():
    """Policy requeue_once (max age 100 ns here): exposure 0 (first sent at 0, lost at 50) is fresh and is
    sent again before anything new, keeping its place in the publishing order; exposure 1 (sent at 0, lost
    the second time at 60) is not re-queued twice; a job older than the max age is dropped."""
    collector = ResultCollector(result_timeout_ns=10**12, requeue_max_age_ns=100)
    collector.dispatched(make_job(0), 0, 0, b"a")
    collector.dispatched(make_job(1), 0, 1, b"b")
    collector.dispatched(make_job(2), 0, 1, b"b")
    assert collector.received(_wire(2, worker_id=1), 10) == []  # waits behind 0 and 1
    assert collector.worker_lost(0, "exited", 50, exited=True) == 0
    assert collector.requeued == 1 and collector.in_flight == 3 and collector.held(b"a") == 0
    assert collector.next_resend().exposure_id == 0  # serve sends it before any job of the queue
    collector.resent((0, 0), 55, 1, b"b")
    assert collector.next_resend() is None and collector.held(b"b") == 2
    assert collector.worker_lost(1, "silent", 60) == 1  # exposure 0 (re-queued before): dropped
    assert collector.requeued == 2 and collector.lost == 1  # exposure 1 (fresh): re-queued
    assert collector.next_resend().exposure_id == 1
    collector.resent((0, 1), 61, 2, b"c")
    released = collector.received(_wire(1, worker_id=2), 70)  # 0 dropped, 1 answered, 2 waited: out in order
    assert [r.exposure_id for _, r in released] == [1, 2] and collector.in_flight == 0

    stale = ResultCollector(result_timeout_ns=10**12, requeue_max_age_ns=100)
    stale.dispatched(make_job(0), 0, 0, b"a")
    assert stale.worker_lost(0, "exited", 100, exited=True) == 1 and stale.requeued == 0
    dropping = ResultCollector(result_timeout_ns=10**12)  # lost_job_policy "drop"
    dropping.dispatched(make_job(0), 0, 0, b"a")
    assert dropping.worker_lost(0, "exited", 1, exited=True) == 1 and dropping.requeued == 0


def test_a_job_whose_send_failed_is_sent_to_the_next_worker_first_without_counting():
    collector = ResultCollector(result_timeout_ns=10**12, requeue_max_age_ns=100)
    collector.dispatched(make_job(0), 0, 0, b"a")
    collector.unsent((0, 0))  # the connection was gone: ROUTER_MANDATORY said so
    assert collector.held(b"a") == 0 and collector.next_resend().exposure_id == 0
    assert collector.requeued == 0 and collector.lost == 0


def test_results_wait_for_an_earlier_exposure_at_most_the_reorder_wait_then_serve_skips_ahead():
    """A slow worker holds exposure 0 while a fast one finishes 1 and 2: they wait, then go out without 0
    (reorder_skipped); 0 keeps its worker's credit until its late result comes, which is discarded."""
    collector = ResultCollector(result_timeout_ns=10**12, reorder_wait_ns=1000)
    collector.dispatched(make_job(0), 0, 0, b"slow")
    collector.dispatched(make_job(1), 1, 1, b"fast")
    assert collector.received(_wire(1, worker_id=1), 100) == []
    collector.dispatched(make_job(2), 101, 1, b"fast")
    assert collector.received(_wire(2, worker_id=1), 600) == [] and collector.held(b"fast") == 0
    assert collector.release(1099) == []  # result 1 has waited 999 ns
    assert [r.exposure_id for _, r in collector.release(1100)] == [1, 2]
    assert collector.reorder_skipped == 1 and collector.in_flight == 0
    assert collector.held(b"slow") == 1  # still computing the skipped exposure: no second job for it
    assert collector.received(_wire(0), 5000) == [] and collector.held(b"slow") == 0
    assert collector.rejected == 0 and collector.unexpected == 0  # a late result, not a bad one


def test_more_waiting_results_than_the_reorder_bound_skip_ahead_at_once():
    collector = ResultCollector(result_timeout_ns=10**12, reorder_wait_ns=10**12, reorder_max_results=2)
    collector.dispatched(make_job(0), 0, 0, b"slow")
    for i in (1, 2, 3):
        collector.dispatched(make_job(i), i, 1, b"fast")
    assert collector.received(_wire(1, worker_id=1), 10) == [] and collector.received(_wire(2, worker_id=1), 11) == []
    released = collector.received(_wire(3, worker_id=1), 12)  # a third waiting result: over the bound
    assert [r.exposure_id for _, r in released] == [1, 2, 3] and collector.reorder_skipped == 1


def test_a_requeued_job_answered_by_its_first_worker_after_all_is_published_once():
    collector = ResultCollector(result_timeout_ns=10**12, requeue_max_age_ns=10**9)
    collector.dispatched(make_job(0), 0, 0, b"a")
    collector.worker_lost(0, "silent", 1)
    collector.resent((0, 0), 2, 1, b"b")
    assert [r.exposure_id for _, r in collector.received(_wire(0), 3)] == [0]  # worker 0's answer, sent before
    assert collector.held(b"b") == 1  # worker 1 still computes its copy
    assert collector.received(_wire(0), 4) == [] and collector.held(b"b") == 0 and collector.rejected == 0


def test_worker_routes_give_credits_to_the_longest_idle_connection_and_cap_them():
    from spikereveal.stream.dispatch import WorkerRoutes
    from spikereveal.stream.wire import Ready

    routes = WorkerRoutes(max_credits=2, max_routes=3)
    assert routes.announce(b"a", Ready(0, 5, 100), 0)[0].credits == 2  # capped by serve
    assert routes.announce(b"b", Ready(1, 1, 101), 0)[1] is True
    assert routes.announce(b"b", Ready(1, 1, 101), 1)[1] is False  # a repeat announcement: same route
    held = {b"a": 0, b"b": 0}
    picked = []
    for now in range(3):
        route = routes.pick(lambda identity: held[identity])
        held[route.identity] += 1
        routes.sent(route.identity, now)
        picked.append(route.identity)
    assert picked == [b"a", b"b", b"a"]  # the longest idle first
    assert routes.pick(lambda identity: held[identity]) is None  # a: 2 of 2, b: 1 of 1
    assert routes.announce(b"a2", Ready(0, 1, 100), 5)[1] and b"a" not in routes  # same process reconnected
    assert routes.announce(b"c", Ready(2, 1, 102), 5)[0] is not None
    assert routes.announce(b"d", Ready(3, 1, 103), 5) == (None, False) and routes.refused == 1  # the bound
    assert routes.forget_worker(2) == 1 and len(routes) == 2


def test_heartbeat_and_acknowledgement_round_trip():
    from spikereveal.stream.wire import decode_heartbeat, encode_heartbeat, encode_ready

    assert decode_heartbeat([bytes(p) for p in encode_heartbeat(5)]) == (5, None)
    assert decode_heartbeat([bytes(p) for p in encode_heartbeat(5, (2, 42))]) == (5, (2, 42))
    assert decode_heartbeat(encode_ready(5)) is None
    assert decode_heartbeat(encode_result(None, 1, 9, K)) is None


def _worker_thread(tmp_path, runner_factory, errors=None, **kwargs):
    from spikereveal.stream.worker import run_worker

    def main():
        try:
            run_worker(f"ipc://{tmp_path}/j", f"ipc://{tmp_path}/r", runner_factory, **kwargs)
        except Exception as exc:  # noqa: BLE001 handed to the test
            if errors is None:
                raise
            errors.append(exc)

    thread = threading.Thread(target=main)
    thread.start()
    return thread


def test_a_worker_announces_its_credits_acknowledges_each_job_and_beats_while_inference_runs(tmp_path):
    zmq = pytest.importorskip("zmq")
    from spikereveal.stream.wire import decode_heartbeat, decode_ready, encode_welcome

    context = zmq.Context()
    jobs, results = context.socket(zmq.ROUTER), context.socket(zmq.PULL)
    jobs.bind(f"ipc://{tmp_path}/j")
    results.bind(f"ipc://{tmp_path}/r")
    gate, stop = threading.Event(), threading.Event()
    runner = FakeRunner(InputShape(K, 4 * SPIKE_H, 4 * SPIKE_W), gate)
    runner.options = runner.options.__class__(warmup_runs=0)
    thread = _worker_thread(tmp_path, lambda s: runner, worker_id=3, stop=stop, heartbeat_interval_s=0.02, credits=2)
    try:
        assert jobs.poll(10_000)
        identity, *parts = jobs.recv_multipart()
        ready = decode_ready(parts)
        assert (ready.worker_id, ready.credits) == (3, 2)
        jobs.send_multipart([identity, *encode_welcome(3, 2)])
        jobs.send_multipart([identity, *encode_job(make_job(8))])
        seen = []
        while results.poll(10_000):  # until a beat after the ack: inference is stuck, the beats go on
            seen.append(decode_heartbeat(results.recv_multipart()))
            if (3, (0, 8)) in seen and seen[-1] == (3, None):
                break
        assert (3, (0, 8)) in seen and seen[-1] == (3, None)
        gate.set()
        while results.poll(10_000):
            parts = results.recv_multipart()
            if decode_heartbeat(parts) is None:
                assert decode_result(parts).exposure_id == 8
                break
        announced = 0  # idle again: it announces itself every heartbeat interval (a restarted serve learns of it)
        while announced < 2 and jobs.poll(10_000):
            again = jobs.recv_multipart()
            assert again[0] == identity and decode_ready(again[1:]) == ready
            announced += 1
    finally:
        gate.set()
        stop.set()
        thread.join(30)
        jobs.close(linger=0)
        results.close(linger=0)
        context.term()


def test_a_worker_stops_with_a_clear_error_when_serve_speaks_another_wire_version(tmp_path):
    import struct

    zmq = pytest.importorskip("zmq")
    from spikereveal.stream.wire import JOB_VERSION, WELCOME_MAGIC

    context = zmq.Context()
    jobs, results = context.socket(zmq.ROUTER), context.socket(zmq.PULL)
    jobs.bind(f"ipc://{tmp_path}/j")
    results.bind(f"ipc://{tmp_path}/r")
    errors, stop = [], threading.Event()
    thread = _worker_thread(tmp_path, lambda s: loaded_runner(), errors, worker_id=1, stop=stop)
    try:
        assert jobs.poll(10_000)
        identity = jobs.recv_multipart()[0]
        newer = struct.pack("<4sHHII", WELCOME_MAGIC, JOB_VERSION + 1, 1, 1, 0)  # a future, longer header
        jobs.send_multipart([identity, b"welcome", newer])
        thread.join(30)
        assert not thread.is_alive()
    finally:
        stop.set()
        thread.join(30)
        jobs.close(linger=0)
        results.close(linger=0)
        context.term()
    assert len(errors) == 1 and isinstance(errors[0], ProtocolError)
    assert f"wire version {JOB_VERSION + 1}" in str(errors[0]) and "same spikereveal version" in str(errors[0])


def test_wire_messages_say_their_version_and_credits_are_validated():
    from spikereveal.stream.wire import (
        JOB_VERSION, decode_ready, decode_welcome, encode_heartbeat, encode_ready, encode_welcome, wire_version)

    assert wire_version(encode_ready(2, 3)) == ("ready", JOB_VERSION)
    assert wire_version(encode_heartbeat(2)) == ("heartbeat", JOB_VERSION)
    assert wire_version(encode_job(make_job(0))) == ("job", JOB_VERSION)
    assert wire_version([b"res", b"SRRS\x02\x00rest"]) == ("result", 2)  # an older worker's result
    assert wire_version([b"x", b"garbage"]) is None and wire_version([b"x"]) is None
    old_ready = [b"ready", bytes(encode_ready(2)[1])[:4] + b"\x02\x00" + bytes(encode_ready(2)[1])[6:]]
    assert decode_ready(old_ready) is None and wire_version(old_ready) == ("ready", 2)
    assert decode_welcome(encode_welcome(2, 1)) == (JOB_VERSION, 1)
    for bad in (0, 70000):
        with pytest.raises(ConfigError, match="--credits"):
            encode_ready(1, bad)


# -- memory bounded in bytes (issue 14 item 9) -------------------------------------------------------------------
def test_job_queue_is_bounded_in_bytes_and_counts_the_drops():
    from spikereveal.stream.jobs import job_nbytes

    size = job_nbytes(make_job(0))
    for policy in ("drop_oldest", "drop_newest"):
        queue = JobQueue(capacity_jobs=100, when_full=policy, max_bytes=3 * size + size // 2)
        for i in range(20):
            queue.put(make_job(i))
            assert queue.nbytes <= queue.max_bytes and queue.nbytes == sum(job_nbytes(j) for j in queue._items)
        assert len(queue) == 3 and queue.dropped == 17 and queue.peak_bytes <= queue.max_bytes
        kept = [queue.get_nowait().exposure_id for _ in range(3)]
        assert kept == ([17, 18, 19] if policy == "drop_oldest" else [0, 1, 2]) and queue.nbytes == 0


def test_a_flood_of_large_exposures_keeps_the_pipeline_within_its_byte_bounds():
    from spikereveal.stream.graph import Pipeline
    from spikereveal.stream.protocol import RgbExposure, SpikeBlock, encode
    from spikereveal.stream.sync import Synchroniser, SyncConfig
    from spikereveal.stream.jobs import job_nbytes

    rng = np.random.default_rng(3)
    image_bytes = 4 * SPIKE_H * 4 * SPIKE_W * 3
    sync = Synchroniser(SyncConfig(k=K, max_pending_exposures=1000, max_pending_bytes=5 * image_bytes,
                                   max_ring_frames=200))
    job_bytes = job_nbytes(make_job(0))
    queue = JobQueue(capacity_jobs=1000, max_bytes=3 * job_bytes)  # nothing consumes it: inference is stuck
    now = [0]

    def clock():
        now[0] += 1000
        return now[0]

    pipeline = Pipeline(sync, queue, clock)
    bound = sync.config.max_ring_frames * SPIKE_H * SPIKE_W // 8 + sync.config.max_pending_bytes + queue.max_bytes
    exposures = 60  # 50x faster than the spikes: all of them before the spikes they need
    messages = [RgbExposure(stream_id=2, seq=i, frame_id=i, start_ns=(20 + 5 * i) * 1_000_000,
                            duration_ns=20 * 1_000_000,
                            image=rng.integers(0, 256, (4 * SPIKE_H, 4 * SPIKE_W, 3), dtype=np.uint8))
                for i in range(exposures)]
    messages += [SpikeBlock(stream_id=1, seq=b, first_index=8 * b, t0_ns=0, rate_hz=RATE_HZ, height=SPIKE_H,
                            width=SPIKE_W, packed=pack_frames(rng.random((8, SPIKE_H, SPIKE_W)) < 0.3))
                 for b in range(50)]
    for message in messages:
        pipeline.on_message([bytes(p) for p in encode(message)], clock())
        assert sync.pending_nbytes <= sync.config.max_pending_bytes
        assert queue.nbytes <= queue.max_bytes
    assert pipeline.peak_queued_bytes <= bound
    assert queue.peak_bytes <= queue.max_bytes and len(queue) == 3
    counters = pipeline.counters(ResultSinkStub())
    assert counters["sync_exposures_dropped"] >= exposures - 5 and counters["job_queue_dropped"] >= 1
    assert counters["peak_queued_bytes"] == pipeline.peak_queued_bytes and counters["peak_rss_bytes"] > 0
    waiting = len(queue)  # serve counts these as abandoned at a stop
    assert (counters["exposures_done"] + counters["exposures_skipped"] + counters["exposures_dropped"]
            + counters["exposures_pending_at_exit"] + waiting) == counters["exposures_received"] == exposures


class ResultSinkStub:
    exposures_done = output_messages = output_dropped = out_of_domain_exposures = 0

    class latency:  # noqa: N801
        @staticmethod
        def summary():
            return {}


def test_subscriber_receive_buffers_are_sized_from_their_byte_budget():
    zmq = pytest.importorskip("zmq")
    from spikereveal.stream import transport
    from spikereveal.stream.config import IngestConfig

    ingest = IngestConfig(rgb_max_message_bytes=8 << 20, rgb_receive_buffer_bytes=64 << 20,
                          spike_max_message_bytes=1 << 20, spike_receive_buffer_bytes=64 << 20)
    assert ingest.receive_hwm("rgb") == 8 and ingest.receive_hwm("spike") == 64
    assert IngestConfig(receive_hwm_messages=10).receive_hwm("spike") == 10  # the message cap still applies
    assert IngestConfig().receive_hwm("rgb") * IngestConfig().rgb_max_message_bytes <= 128 << 20
    with pytest.raises(ConfigError, match="rgb_receive_buffer_bytes"):
        IngestConfig(rgb_max_message_bytes=8 << 20, rgb_receive_buffer_bytes=4 << 20)
    context = zmq.Context()
    try:
        socket = transport.open_subscriber(context, "inproc://x", receive_hwm=ingest.receive_hwm("rgb"),
                                           max_message_bytes=ingest.rgb_max_message_bytes)
        assert socket.getsockopt(zmq.RCVHWM) == 8 and socket.getsockopt(zmq.MAXMSGSIZE) == 8 << 20
        socket.close(linger=0)
    finally:
        context.term()


def test_the_pipeline_announces_the_spike_geometry_at_the_first_block():
    from spikereveal.stream.graph import Pipeline
    from spikereveal.stream.protocol import SpikeBlock, encode
    from spikereveal.stream.sync import Synchroniser, SyncConfig

    seen = []
    pipeline = Pipeline(Synchroniser(SyncConfig(k=K)), JobQueue(2), lambda: 0,
                        on_spike_geometry=lambda h, w: seen.append((h, w, pipeline.sync.counters.messages)))
    for b in range(3):
        block = SpikeBlock(stream_id=1, seq=b, first_index=8 * b, t0_ns=0, rate_hz=RATE_HZ, height=SPIKE_H,
                           width=SPIKE_W, packed=pack_frames(np.zeros((8, SPIKE_H, SPIKE_W), bool)))
        pipeline.on_message([bytes(p) for p in encode(block)], 0)
    assert seen == [(SPIKE_H, SPIKE_W, 0)]  # once, before the block itself was synchronised


def test_a_warming_queue_holds_exposures_instead_of_dropping_them_for_capacity():
    queue = JobQueue(capacity_jobs=1, warmup_capacity_jobs=4)
    queue.begin_warmup()
    for i in range(5):
        queue.put(make_job(i))
    assert len(queue) == 4 and queue.dropped == 0 and queue.warmup_dropped == 1
    queue.end_warmup()  # the backlog is processed, not trimmed by the next exposure
    queue.put(make_job(5))  # more than inference takes meanwhile: a capacity drop, at the backlog's length
    assert len(queue) == 4 and queue.dropped == 1
    for _ in range(3):
        queue.get_nowait()
    queue.put(make_job(6))  # caught up: the normal bound again
    assert len(queue) == 1 and queue.dropped == 2 and [j.exposure_id for j in queue.clear()] == [6]


def _forged(wire, **changes):
    import dataclasses

    return dataclasses.replace(wire, **changes)


def test_results_that_do_not_match_their_job_are_rejected_and_the_job_waits_for_its_real_result():
    from spikereveal.stream.collector import result_matches

    job = make_job(0)
    real = _wire(0)
    assert result_matches(job, real) is None
    forged = {
        "exposure_id": _forged(real, exposure_id=1),
        "k": _forged(real, k=K + 1),
        "size": _forged(real, sharp=real.sharp[:, :-4]),
        "timestamps": _forged(real, timestamps_ns=real.timestamps_ns + 1),
    }
    for reason, wire in forged.items():
        assert result_matches(job, wire) == reason
    collector = ResultCollector(result_timeout_ns=10**9)
    collector.dispatched(job, 0)
    for wire in (*forged.values(), _wire(7)):  # the exposure_id one and exposure 7 answer no job in flight
        assert collector.received(wire, 5) == []
    assert collector.rejected_by_reason == {"k": 1, "size": 1, "timestamps": 1, "not_in_flight": 2}
    assert collector.rejected == 5 and collector.in_flight == 1
    ((_, result),) = collector.received(real, 10)  # the real one is still accepted
    assert np.array_equal(result.sharp, real.sharp)
    assert collector.received(real, 20) == [] and collector.rejected == 6


def test_a_remote_worker_default_id_is_clear_of_local_workers_and_differs_between_processes():
    """``spikereveal worker`` without --id draws its id from host and process: >= 2**16 (serve's local
    workers are 0, 1, ...) and < 2**31 (the wire's field), different for two processes on one host."""
    import subprocess
    import sys

    from spikereveal.commands.worker import default_worker_id

    code = "from spikereveal.commands.worker import default_worker_id; print(default_worker_id())"
    ids = {int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
           for _ in range(3)} | {default_worker_id()}
    assert len(ids) == 4
    assert all(1 << 16 <= worker_id < 1 << 31 for worker_id in ids)
