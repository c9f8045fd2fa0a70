"""Latency statistics: nearest-rank percentiles by hand and against numpy, warm-up, empty input, throughput."""

import json
import math

import numpy as np
import pytest

from spikereveal.stream.stats import (
    CV_WARNING_THRESHOLD,
    PERCENTILES,
    latency_stats,
    nearest_rank,
    nearest_rank_percentile,
    percentile_key,
    rate_hz,
    real_time_factor,
    throughput,
)
from spikereveal.errors import ConfigError


def test_nearest_rank_by_hand():
    # the textbook example: ranks ceil(p/100 * 5)
    samples = [35, 20, 15, 50, 40]
    assert nearest_rank_percentile(samples, 5) == 15  # rank 1
    assert nearest_rank_percentile(samples, 30) == 20  # rank ceil(1.5) = 2
    assert nearest_rank_percentile(samples, 40) == 20  # rank 2 exactly: no interpolation, no rounding up
    assert nearest_rank_percentile(samples, 50) == 35  # rank ceil(2.5) = 3
    assert nearest_rank_percentile(samples, 100) == 50
    assert nearest_rank_percentile(samples, 0) == 15  # rank clamped to 1


def test_latency_stats_by_hand_on_one_to_ten():
    samples = np.random.default_rng(0).permutation(np.arange(1.0, 11.0))
    stats = latency_stats(samples)
    assert stats["count"] == 10 and stats["warmup_excluded"] == 0
    assert stats["percentile_method"] == "nearest-rank"
    assert (stats["min_ms"], stats["max_ms"], stats["mean_ms"]) == (1.0, 10.0, 5.5)
    assert stats["p50_ms"] == 5.0  # rank 5 (np.median would interpolate to 5.5)
    assert stats["p90_ms"] == 9.0  # rank 9
    assert stats["p95_ms"] == stats["p99_ms"] == stats["p99_9_ms"] == 10.0  # ranks ceil(9.5), ceil(9.9), ceil(9.99)
    assert stats["std_ms"] == pytest.approx(np.std(samples))  # population std (ddof=0)
    assert stats["cv"] == pytest.approx(np.std(samples) / 5.5)


def test_p99_9_rank_is_exact_where_float_arithmetic_rounds_up():
    # 0.999 * 1000 = 999.0000000000001 in floating point: a float ceil would pick rank 1000
    assert nearest_rank(1000, 99.9) == 999
    assert nearest_rank(2000, 99.9) == 1998
    samples = np.arange(1, 1001, dtype=np.float64)
    assert latency_stats(samples)["p99_9_ms"] == 999.0


def _numpy_boundary_is_ambiguous(n: int, q: float) -> bool:
    exact = q * n / 100.0
    return abs(exact - round(exact)) < 1e-9 and round(q * 10) % 10 != 0


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 19, 100, 101, 999, 1000, 4097])
def test_percentiles_match_numpy_inverted_cdf(n):
    samples = np.random.default_rng(n).gamma(2.0, 3.0, size=n)
    stats = latency_stats(samples)
    for q in PERCENTILES:
        if _numpy_boundary_is_ambiguous(n, q):
            continue  # numpy's float rank rounds up there; the hand ranks above cover these cases
        assert stats[percentile_key(q)] == np.percentile(samples, q, method="inverted_cdf"), q
    assert stats["mean_ms"] == pytest.approx(samples.mean())
    assert stats["std_ms"] == pytest.approx(samples.std())
    assert stats["min_ms"] == samples.min() and stats["max_ms"] == samples.max()


def test_warmup_excludes_the_first_samples_in_arrival_order():
    samples = np.array([500.0, 400.0, 3.0, 1.0, 2.0, 4.0])
    stats = latency_stats(samples, warmup=2)
    assert stats["warmup_excluded"] == 2 and stats["count"] == 4
    assert stats["max_ms"] == 4.0
    assert {k: v for k, v in stats.items() if k != "warmup_excluded"} == \
        {k: v for k, v in latency_stats(samples[2:]).items() if k != "warmup_excluded"}


@pytest.mark.parametrize("samples, warmup", [([], 0), ([1.0, 2.0], 2), ([1.0, 2.0], 5)])
def test_no_samples_give_count_zero_and_null_statistics(samples, warmup):
    stats = latency_stats(samples, warmup=warmup)
    assert stats["count"] == 0 and stats["warmup_excluded"] == len(samples)
    for key in ("min_ms", "mean_ms", "std_ms", "p50_ms", "p99_9_ms", "max_ms", "cv", "cv_warning"):
        assert stats[key] is None, key
    assert json.loads(json.dumps(stats))["p99_ms"] is None  # valid JSON (null, not NaN)


def test_one_sample_is_every_statistic():
    stats = latency_stats([7.5])
    for q in PERCENTILES:
        assert stats[percentile_key(q)] == 7.5
    assert stats["min_ms"] == stats["max_ms"] == stats["mean_ms"] == 7.5
    assert stats["std_ms"] == 0.0 and stats["cv"] == 0.0 and stats["cv_warning"] is False


def test_units_are_converted_to_ms():
    ns = np.array([1_000_000, 3_000_000], dtype=np.int64)
    assert latency_stats(ns, unit="ns")["max_ms"] == 3.0
    assert latency_stats([0.002], unit="s")["p50_ms"] == pytest.approx(2.0)
    assert latency_stats([1500.0], unit="us")["p50_ms"] == pytest.approx(1.5)


def test_cv_warning_above_two_and_a_half_percent():
    assert latency_stats([10.0] * 20)["cv_warning"] is False
    steady = 10.0 + np.tile([-0.1, 0.1], 10)  # cv = 1 %
    noisy = 10.0 + np.tile([-0.5, 0.5], 10)  # cv = 5 %
    assert latency_stats(steady)["cv"] == pytest.approx(0.01) and not latency_stats(steady)["cv_warning"]
    assert latency_stats(noisy)["cv"] == pytest.approx(0.05) and latency_stats(noisy)["cv_warning"]
    assert CV_WARNING_THRESHOLD == 0.025


@pytest.mark.parametrize("bad, kwargs, match", [
    ([1.0, float("nan")], {}, "NaN"),
    ([[1.0, 2.0]], {}, "1-D"),
    ([1.0], {"warmup": -1}, "warmup"),
    ([1.0], {"warmup": 1.5}, "warmup"),
    ([1.0], {"unit": "min"}, "unit"),
    (["a", "b"], {}, "numbers"),
])
def test_bad_input_is_a_clear_error(bad, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        latency_stats(bad, **kwargs)


def test_percentile_arguments_are_checked():
    with pytest.raises(ConfigError, match="0..100"):
        nearest_rank(10, 101)
    with pytest.raises(ConfigError, match="one decimal"):
        nearest_rank(10, 99.99)
    with pytest.raises(ConfigError, match="at least one"):
        nearest_rank_percentile([], 50)
    assert percentile_key(99.9) == "p99_9_ms" and percentile_key(50) == "p50_ms"


def test_throughput_and_real_time_factor():
    completions = 5_000_000 + np.arange(11) * 10_000_000  # every 10 ms
    rates = throughput(completions, [7] * 11, k=7, exposure_rate_hz=100.0)
    assert rates["span_s"] == pytest.approx(0.1)
    assert rates["exposures_per_s"] == pytest.approx(100.0)
    assert rates["output_frames_per_s"] == pytest.approx(700.0)
    assert rates["real_time_factor"] == pytest.approx(1.0)
    half = throughput(completions, [7] * 11, k=7, exposure_rate_hz=200.0)
    assert half["real_time_factor"] == pytest.approx(0.5)
    warm = throughput(np.r_[0, 1, completions], [7] * 13, warmup=2)
    assert warm["exposures_per_s"] == pytest.approx(100.0) and warm["warmup_excluded"] == 2
    assert warm["real_time_factor"] is None  # no exposure rate given
    shuffled = throughput(completions[::-1], None)
    assert shuffled["exposures_per_s"] == pytest.approx(100.0)
    assert shuffled["output_frames_per_s"] == pytest.approx(100.0)  # one frame per completion by default


def test_throughput_needs_two_completions():
    for times in ([], [5], [5, 5]):
        rates = throughput(times)
        assert rates["exposures_per_s"] is None and rates["real_time_factor"] is None
    with pytest.raises(ConfigError, match="entries"):
        throughput([1, 2, 3], [7, 7])


def test_rate_hz_and_real_time_factor_edge_cases():
    assert rate_hz(np.arange(5) * 40_000_000) == pytest.approx(25.0)
    assert rate_hz([1]) is None and rate_hz([]) is None
    assert real_time_factor(175.0, 7, 25.0) == pytest.approx(1.0)
    assert real_time_factor(175.0, 7, None) is None and real_time_factor(175.0, 7, 0.0) is None
    assert math.isclose(real_time_factor(350.0, 7, 25.0), 2.0)
