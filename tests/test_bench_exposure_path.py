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
        from spikereveal.stream.stage import ExposureProcessor

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
    assert "prepare_plus_postprocess" in format_table(result)


def test_synthetic_job_fits_the_processor_and_passes_the_frame_through():
    from spikereveal.stream.stage import ExposureProcessor

    runner = PassThroughRunner(SHAPE).load()
    job = synthetic_job(SHAPE)
    assert job.image.shape == (16, 24, 3) and job.centers.shape == (3,)
    processor = ExposureProcessor(runner)
    sharp = processor.process(job).sharp
    assert sharp.shape == (3, 16, 24, 3) and all(np.array_equal(frame, job.image) for frame in sharp)
    assert processor.spikes.any()  # the window was really cut


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"repeats": 2.0}, {"warmup": -1}])
def test_bad_counts_raise(kwargs):
    with pytest.raises(ConfigError):
        time_exposure_path(SHAPE, **kwargs)


def test_cli_prints_the_table_and_writes_json(tmp_path, monkeypatch, capsys):
    import json

    from spikereveal import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ("bench",))
    out = tmp_path / "path.json"
    rc = cli.main(["bench", "exposure-path", "--geometry", "16x24", "--k", "3", "--repeats", "3", "--warmup", "1",
                   "--json", str(out)])
    assert rc == 0 and "prepare_plus_postprocess" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["geometry"]["k"] == 3 and result["stages"]["prepare"]["count"] == 3
