"""bench soak: the frame checker (pure) and a short soak of the real serve CLI (the CI variant of issue 14's)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spikereveal.bench.soak import FrameChecker, SoakConfig, format_soak, stated_queue_bound_bytes
from spikereveal.errors import ConfigError
from spikereveal.stream.protocol import SharpFrame


def _frame(exposure_id: int, k: int, image: np.ndarray) -> SharpFrame:
    return SharpFrame(stream_id=1, seq=0, exposure_id=exposure_id, t_ns=0, k=k, count=7, image=image)


def _references():
    rng = np.random.default_rng(0)
    a = {(e, k): rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for e in range(3) for k in range(2)}
    b = {(e, k): rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for e in range(4) for k in range(2)}
    return a, b


def test_the_checker_matches_a_or_b_across_loops_and_flags_anything_else():
    a, b = _references()
    checker = FrameChecker([a, b], periods=[3, 4])
    assert checker.check(_frame(1, 0, a[(1, 0)]))
    assert checker.check(_frame(3 + 2, 1, a[(2, 1)]))  # a looped replay: exposure ids go on past the recording
    assert checker.check(_frame(3, 0, b[(3, 0)]))  # B's exposure 3 (A has only 3 exposures)
    off_by_one = a[(0, 0)].astype(np.int16)
    off_by_one[0, 0, 0] += 1 if off_by_one[0, 0, 0] < 255 else -1
    assert checker.check(_frame(0, 0, off_by_one.astype(np.uint8)))  # one gray level: matched, not identical
    assert (checker.frames, checker.matched, checker.identical, checker.wrong) == (4, 4, 3, 0)
    assert not checker.check(_frame(1, 0, b[(2, 0)]))  # another exposure's frame: wrong
    assert not checker.check(_frame(0, 5, a[(0, 0)]))  # a frame index neither recording has
    assert not checker.check(_frame(0, 0, a[(0, 0)][:4]))  # another size
    assert checker.wrong == 3 and checker.matched == 4 and len(checker.wrong_examples) == 3
    assert checker.wrong_examples[0]["closest"] in ("A", "B") and checker.wrong_examples[1]["closest"] is None


def test_soak_config_refuses_nonsense():
    for bad in ({"duration_s": 0}, {"speed": -1}, {"kill_worker_every_s": -5}, {"workers": 0},
                {"rss_bound_bytes": 0}, {"exposures": 2}):
        with pytest.raises(ConfigError):
            SoakConfig(**bad)
    assert stated_queue_bound_bytes() == 768 * 2**20


@pytest.mark.slow
def test_a_short_soak_publishes_only_offline_frames_and_its_counters_add_up(tmp_path):
    """Issue 14's soak, CI-sized: restarts into the other recording, killed (and replaced) workers, mutated
    messages; every published frame is compared with offline deblur."""
    pytest.importorskip("zmq")
    pytest.importorskip("onnxruntime")
    from spikereveal.bench.soak import run_soak

    config = SoakConfig(duration_s=36.0, restart_every_s=9.0, kill_worker_every_s=14.0, exposures=6)
    report = run_soak(config, tmp_path)
    assert report["passed"], format_soak(report)
    assert report["frames_wrong"] == 0 and report["frames_published_checked"] > 0
    assert report["restarts_into_other_recording"] >= 3 and report["workers_killed"] == 2
    assert report["workers_restarted"] == 2
    counters = report["serve_counters"]
    assert counters["malformed"] > 0 and counters["restarts"] >= 3
    assert json.loads((tmp_path / "soak.json").read_text())["passed"]
