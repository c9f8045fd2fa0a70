"""bench.exposure_path on a tiny geometry: the schema, warm-up exclusion, and that the processor really ran."""

import numpy as np
import pytest

from spikereveal.bench.exposure_path import STAGES, PassThroughRunner, format_table, synthetic_job, time_exposure_path
from spikereveal.engines.runners import InputShape
from spikereveal.errors import ConfigError

SHAPE = InputShape(3, 16, 24)


def test_timings_per_stage_with_warmup_excluded():
    calls = []

    def factory(runner):
        from spikereveal.stream.worker import ExposureProcessor

        processor = ExposureProcessor(runner)
        process = processor.process
        processor.process = lambda job: calls.append(job.exposure_id) or process(job)
        return processor

    result = time_exposure_path(SHAPE, repeats=4, warmup=1, processor_factory=factory)
    assert len(calls) == 5
    assert result["geometry"] == {"k": 3, "height": 16, "width": 24, "spike_frames": SHAPE.spike_frames}
    assert set(result["stages"]) == set(STAGES)
    for stats in result["stages"].values():
        assert stats["count"] == 4 and stats["warmup_excluded"] == 1 and 0 <= stats["min_ms"] <= stats["max_ms"]
    prepare, post, total = (result["stages"][name]["mean_ms"] for name in STAGES)
    assert total == pytest.approx(prepare + post)
    assert "non_inference" in format_table(result)


def test_synthetic_job_fits_the_processor_and_the_runner_output_needs_clipping():
    from spikereveal.stream.worker import ExposureProcessor

    runner = PassThroughRunner(SHAPE)
    assert runner.sharp.min() < 0 and runner.sharp.max() > 1
    job = synthetic_job(SHAPE)
    assert job.image.shape == (16, 24, 3) and job.centers.shape == (3,)
    sharp = ExposureProcessor(runner).process(job).sharp
    expected = (np.clip(runner.sharp, 0, 1) * np.float32(255) + np.float32(0.5)).astype(np.uint8)
    assert np.array_equal(sharp, expected.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"repeats": 2.0}, {"warmup": -1}])
def test_bad_counts_raise(kwargs):
    with pytest.raises(ConfigError):
        time_exposure_path(SHAPE, **kwargs)
