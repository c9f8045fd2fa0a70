"""The simulator's integrate-and-fire sensor: kernel vs a numpy twin, firing rate, noise model."""

import numpy as np
import pytest

from spikereveal.errors import ConfigError
from spikereveal.kernels import unpack_frames
from spikereveal.sim.config import SensorConfig
from spikereveal.sim.spikes import fire_spikes, integrate_and_fire, new_sensor_state
from twins import reference_integrate_and_fire


@pytest.mark.parametrize(
    "frames, height, width, noise",
    [(7, 6, 12, False), (5, 5, 8, True), (9, 40, 64, True), (3, 1, 8, False), (4, 3, 24, True), (0, 4, 6, True)],
)
def test_kernel_matches_numpy_twin(frames, height, width, noise):
    rng = np.random.default_rng(frames * 100 + height)
    # includes saturating values (gain * I > threshold) and negative intensities
    intensity = rng.uniform(-0.1, 1.3, (frames, height, width)).astype(np.float32)
    thresholds = rng.uniform(0.5, 2.0, (height, width))
    accumulator = rng.uniform(0, 2, (height, width))
    kwargs = {}
    if noise:
        kwargs = dict(
            spontaneous_rate=rng.uniform(0, 0.3, (height, width)).astype(np.float32),
            uniforms=rng.random((frames, height, width), dtype=np.float32),
            shot_noise_electrons=20.0,
            normals=rng.standard_normal((frames, height, width), dtype=np.float32),
        )
    expected, expected_acc = reference_integrate_and_fire(
        intensity, accumulator, thresholds, 1.7, kwargs.get("spontaneous_rate"), kwargs.get("uniforms"),
        kwargs.get("shot_noise_electrons", 0.0), kwargs.get("normals"),
    )
    got = integrate_and_fire(intensity, accumulator, thresholds, 1.7, **kwargs)
    assert got.shape == (frames, height * width // 8)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(accumulator, expected_acc)  # the state is updated in place


def test_state_carries_over_between_calls():
    rng = np.random.default_rng(3)
    intensity = rng.random((20, 8, 16), dtype=np.float32)
    thresholds = np.full((8, 16), 2.0)
    one = rng.random((8, 16)) * 2
    two = one.copy()
    whole = integrate_and_fire(intensity, one, thresholds, 1.985)
    halves = np.concatenate(
        [
            integrate_and_fire(intensity[:7], two, thresholds, 1.985),
            integrate_and_fire(intensity[7:], two, thresholds, 1.985),
        ]
    )
    np.testing.assert_array_equal(whole, halves)


@pytest.mark.parametrize("level", [0.1, 0.37, 0.8, 1.0])
def test_uniform_intensity_fires_at_gain_over_threshold(level):
    config = SensorConfig(dark_spike_rate=0.0)
    state = new_sensor_state(config, 8, 16, np.random.default_rng(1))
    frames = 2000
    packed = fire_spikes(np.full((frames, 8, 16), level, np.float32), state, np.random.default_rng(2))
    rate = unpack_frames(packed, 8, 16).mean()
    assert rate == pytest.approx(config.gain * level / config.threshold, rel=0.01)
    # integrate-and-fire: every pixel's count is the integral over the threshold, +-1
    counts = unpack_frames(packed, 8, 16).sum(axis=0)
    assert np.all(np.abs(counts - frames * config.gain * level / config.threshold) <= 1.0)


def test_strict_threshold_and_remainder():
    thresholds = np.full((1, 8), 2.0)
    acc = np.zeros((1, 8))
    # exactly reaching the threshold does not fire (strict >); the next tick does, keeping the remainder
    intensity = np.full((3, 1, 8), 1.0, np.float32)
    bits = unpack_frames(integrate_and_fire(intensity, acc, thresholds, 2.0), 1, 8)
    assert bits[:, 0, 0].tolist() == [0, 1, 1]
    np.testing.assert_allclose(acc, 2.0)


def test_dark_sensor_fires_at_the_dark_current_rate_and_hot_pixels_where_placed():
    config = SensorConfig(dark_spike_rate=0.02, hot_pixel_fraction=0.01, hot_pixel_rate=0.6)
    height, width, frames = 40, 64, 400
    state = new_sensor_state(config, height, width, np.random.default_rng(5))
    assert len(state.hot_pixels) == round(0.01 * height * width)
    rates = unpack_frames(fire_spikes(np.zeros((frames, height, width), np.float32), state, np.random.default_rng(6)),
                          height, width).mean(axis=0)
    hot = np.zeros((height, width), bool)
    hot[state.hot_pixels[:, 0], state.hot_pixels[:, 1]] = True
    assert rates[~hot].mean() == pytest.approx(0.02, rel=0.05)
    assert rates[hot].mean() == pytest.approx(0.6, rel=0.05)
    found = np.argwhere(rates > 0.3)
    np.testing.assert_array_equal(found, state.hot_pixels)


def test_threshold_mismatch_spreads_pixel_rates():
    flat = new_sensor_state(SensorConfig(dark_spike_rate=0.0), 16, 16, np.random.default_rng(0))
    mismatched = new_sensor_state(
        SensorConfig(dark_spike_rate=0.0, threshold_mismatch=0.1), 16, 16, np.random.default_rng(0)
    )
    assert np.std(mismatched.thresholds / 2.0) == pytest.approx(0.1, rel=0.2)
    intensity = np.full((500, 16, 16), 0.5, np.float32)
    spread = [unpack_frames(fire_spikes(intensity, s, np.random.default_rng(1)), 16, 16).mean(0).std()
              for s in (flat, mismatched)]
    assert spread[1] > 5 * spread[0]


def test_shot_noise_keeps_the_mean_rate_and_adds_variance():
    intensity = np.full((400, 16, 16), 0.4, np.float32)
    counts = {}
    for electrons in (0.0, 5.0):
        config = SensorConfig(dark_spike_rate=0.0, shot_noise_electrons=electrons)
        state = new_sensor_state(config, 16, 16, np.random.default_rng(0))
        frames = unpack_frames(fire_spikes(intensity, state, np.random.default_rng(1)), 16, 16)
        counts[electrons] = frames.reshape(40, 10, 16, 16).sum(axis=1)  # 10-frame counts
    assert counts[5.0].mean() == pytest.approx(counts[0.0].mean(), rel=0.03)
    assert counts[5.0].std() > 2 * counts[0.0].std()


def test_invalid_inputs_raise_config_errors():
    thresholds = np.full((4, 4), 2.0)
    with pytest.raises(ConfigError):
        integrate_and_fire(np.zeros((2, 4, 4), np.float32), np.zeros((4, 4), np.float32), thresholds, 1.0)
    with pytest.raises(ConfigError):
        integrate_and_fire(np.zeros((2, 4, 4), np.float32), np.zeros((4, 4)), thresholds, 1.0,
                           spontaneous_rate=np.zeros((4, 4)))
    with pytest.raises(ConfigError):
        integrate_and_fire(np.zeros((2, 3, 3), np.float32), np.zeros((3, 3)), np.full((3, 3), 2.0), 1.0)
    with pytest.raises(ConfigError):
        SensorConfig(dark_spike_rate=1.5)
    with pytest.raises(ConfigError):
        SensorConfig(threshold=0.0)
