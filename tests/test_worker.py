"""Worker: bounded job queue and its drop policy, window cutting, the inference thread under a flood, jobs and
results on the wire, and the collector's re-ordering. Fake runners: no model, no sockets, no sleeps."""

from __future__ import annotations

import threading
import weakref

import numpy as np
import pytest

from engines_support import reference_spike_windows
from spikereveal.engines.runners import InputShape, Runner
from spikereveal.errors import ConfigError
from spikereveal.kernels.extract import SPIKE_LEVEL
from spikereveal.kernels.packing import pack_frames
from spikereveal.kernels.timing import exposure_window, output_timestamps
from spikereveal.stream.collector import ResultCollector
from spikereveal.stream.protocol import ProtocolError
from spikereveal.stream.sync import ReadyJob
from spikereveal.stream.worker import (
    ExposureProcessor,
    InferenceThread,
    JobQueue,
    ReusableOutputs,
    decode_job,
    decode_result,
    encode_job,
    encode_result,
)

SPIKE_H, SPIKE_W = 16, 24
RATE_HZ = 1000.0
K = 3


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
        packed=pack_frames(rng.random((frames, SPIKE_H, SPIKE_W)) < 0.3), first_index=window.window_first,
        centers=window.centers, timestamps_ns=window.timestamps_ns, window=window, spike_height=SPIKE_H,
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
def _wire(exposure_id, ok=True):
    processor = ExposureProcessor(loaded_runner())
    if not ok:
        return decode_result(encode_result(None, 0, exposure_id, K))
    return decode_result([bytes(p) for p in encode_result(processor.process(make_job(exposure_id)), 0)])


def test_collector_releases_results_in_dispatch_order():
    collector = ResultCollector(slots=3, result_timeout_ns=10**9)
    jobs = [make_job(i) for i in range(3)]
    for job in jobs:
        collector.dispatched(job, 0)
    assert not collector.has_slot
    assert collector.received(_wire(2), 10) == []
    assert collector.received(_wire(1), 20) == []
    released = collector.received(_wire(0), 30)
    assert [result.exposure_id for _, result in released] == [0, 1, 2]
    assert collector.in_flight == 0 and collector.has_slot


def test_collector_counts_a_lost_job_after_the_timeout_and_moves_on():
    collector = ResultCollector(slots=4, result_timeout_ns=1000)
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
    collector = ResultCollector(slots=2, result_timeout_ns=10**9)
    collector.dispatched(job, 0)
    ((_, result),) = collector.received(wire, 10)
    assert result.out_of_domain


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
    collector = ResultCollector(slots=2, result_timeout_ns=10**9)
    collector.dispatched(job, 0)
    for wire in (*forged.values(), _wire(7)):  # the exposure_id one and exposure 7 answer no job in flight
        assert collector.received(wire, 5) == []
    assert collector.rejected_by_reason == {"k": 1, "size": 1, "timestamps": 1, "not_in_flight": 2}
    assert collector.rejected == 5 and collector.in_flight == 1
    ((_, result),) = collector.received(real, 10)  # the real one is still accepted
    assert np.array_equal(result.sharp, real.sharp)
    assert collector.received(real, 20) == [] and collector.rejected == 6
