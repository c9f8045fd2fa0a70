"""Simulator settings: frozen, validated dataclasses and the named presets (SPEC §4).

Units are in the names. Geometry: the spike sensor is ``spike_height x spike_width``; the canonical grid is
4x that; the RGB camera is ``rgb_height x rgb_width`` and must equal the canonical grid unless an
``rgb_homography`` (canonical pixel -> RGB pixel, 3x3 row-major) is set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

from spikereveal.errors import ConfigError
from spikereveal.kernels.timing import DEFAULT_K, DEFAULT_MARGIN_FRAMES
from spikereveal.kernels.images import SPIKE_TO_IMAGE_SCALE

SCENE_KINDS = ("images", "checkerboard", "dark")
MOTION_FAMILIES = ("camera", "objects")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _finite(name: str, value: float) -> None:
    _check(isinstance(value, (int, float)) and math.isfinite(value), f"{name} must be a finite number, got {value!r}")


@dataclass(frozen=True)
class SensorConfig:
    """Integrate-and-fire spike sensor (SPEC §2) and its noise, with physical names.

    Each tick a pixel adds ``gain * I`` (I = gray intensity in [0, 1]) to its accumulator and fires when the
    accumulator is strictly greater than its threshold; the threshold is subtracted, the remainder kept.
    """

    gain: float = 1.985
    threshold: float = 2.0
    random_initial_accumulator: bool = True  # uniform in [0, threshold): sensors start at arbitrary phase
    dark_spike_rate: float = 0.0071  # spontaneous spikes per pixel-frame (dark current / readout noise)
    threshold_mismatch: float = 0.0  # per-pixel relative std of the threshold (fixed-pattern noise)
    hot_pixel_fraction: float = 0.0  # fraction of pixels that fire spontaneously at hot_pixel_rate
    hot_pixel_rate: float = 0.5  # spontaneous spikes per frame of a hot pixel
    shot_noise_electrons: float = 0.0  # electrons per threshold charge; 0 disables photon shot noise

    def __post_init__(self):
        for f in fields(self):
            if f.name != "random_initial_accumulator":
                _finite(f"sensor.{f.name}", getattr(self, f.name))
        _check(self.gain > 0, f"sensor gain must be > 0, got {self.gain}")
        _check(self.threshold > 0, f"sensor threshold must be > 0, got {self.threshold}")
        for name in ("dark_spike_rate", "hot_pixel_fraction", "hot_pixel_rate"):
            value = getattr(self, name)
            _check(0.0 <= value <= 1.0, f"sensor.{name} is a probability, must be in [0, 1], got {value}")
        _check(
            0.0 <= self.threshold_mismatch < 1.0,
            f"sensor.threshold_mismatch is a relative std, must be in [0, 1), got {self.threshold_mismatch}",
        )
        _check(self.shot_noise_electrons >= 0, "sensor.shot_noise_electrons must be >= 0 (0 disables shot noise)")


@dataclass(frozen=True)
class MotionConfig:
    """Camera, sprite and object motion per exposure, in units of the canonical frame (scale-free).

    Translation over one exposure is a fraction of the frame width (the blur length); the velocity changes
    by up to ``acceleration_ratio`` of itself over the exposure; rotation and zoom drift linearly.
    ``family``: ``camera`` (a moving camera, plus ``sprites``) or ``objects`` (also 2-5 fast objects, cut
    from another image than the background, occluding it; use :func:`motion_family` for its slow camera).
    """

    blur_fraction: tuple[float, float] = (0.06, 0.12)  # |displacement| over one exposure / frame width (fast motion)
    acceleration_ratio: float = 0.5  # |velocity change over one exposure| / |velocity|, at most
    rotation_deg: float = 2.0  # |rotation over one exposure|, at most
    base_rotation_deg: float = 8.0  # |camera roll at the exposure centre|, at most
    zoom_ratio: float = 0.03  # |relative zoom change over one exposure|, at most
    sprite_blur_fraction: tuple[float, float] = (0.04, 0.12)  # sprite displacement / frame width
    sprite_size_fraction: tuple[float, float] = (0.2, 0.35)  # sprite diameter / frame height
    family: str = "camera"  # "camera" or "objects"
    object_count: tuple[int, int] = (2, 5)  # objects per exposure (objects family), inclusive range
    object_blur_fraction: tuple[float, float] = (0.05, 0.15)  # object displacement / frame width
    object_size_fraction: tuple[float, float] = (0.15, 0.4)  # object size / frame height

    def __post_init__(self):
        _check(self.family in MOTION_FAMILIES, f"motion.family must be one of {MOTION_FAMILIES}, got {self.family!r}")
        low, high = self.object_count
        _check(
            all(isinstance(v, int) for v in (low, high)) and 0 <= low <= high,
            f"motion.object_count must be integers (low, high) with 0 <= low <= high, got {self.object_count!r}",
        )
        for name in ("blur_fraction", "sprite_blur_fraction", "sprite_size_fraction", "object_blur_fraction",
                     "object_size_fraction"):
            low, high = getattr(self, name)
            _finite(f"motion.{name}[0]", low)
            _finite(f"motion.{name}[1]", high)
            _check(0 <= low <= high, f"motion.{name} must be a range (low, high) with 0 <= low <= high")
        _check(self.sprite_size_fraction[0] > 0, "motion.sprite_size_fraction must be > 0")
        _check(self.object_size_fraction[0] > 0, "motion.object_size_fraction must be > 0")
        for name in ("acceleration_ratio", "rotation_deg", "base_rotation_deg", "zoom_ratio"):
            _finite(f"motion.{name}", getattr(self, name))
            _check(getattr(self, name) >= 0, f"motion.{name} must be >= 0")
        _check(self.zoom_ratio < 0.5, "motion.zoom_ratio must be < 0.5")

    @staticmethod
    def static() -> "MotionConfig":
        """No camera motion at all (sprites still move unless sprite_blur_fraction is zeroed)."""
        return MotionConfig(
            blur_fraction=(0.0, 0.0), acceleration_ratio=0.0, rotation_deg=0.0, base_rotation_deg=0.0, zoom_ratio=0.0
        )


def motion_family(name: str, base: MotionConfig | None = None) -> MotionConfig:
    """The motion of a family: ``camera`` is ``base`` (default ``MotionConfig()``); ``objects`` is a slow,
    nearly static camera (blur 0-2 % of the width, little roll and zoom) with 2-5 fast objects (5-15 %)."""
    base = MotionConfig() if base is None else base
    if name == "camera":
        return replace(base, family="camera")
    if name == "objects":
        return replace(
            base, family="objects", blur_fraction=(0.0, 0.02), rotation_deg=0.2, base_rotation_deg=3.0,
            zoom_ratio=0.005,
        )
    raise ConfigError(f"unknown motion family {name!r}; choose one of {', '.join(MOTION_FAMILIES)}")


def scaled_motion(motion: MotionConfig, camera_scale: float = 1.0, object_speed_scale: float = 1.0) -> MotionConfig:
    """``motion`` with the camera's blur, roll and zoom per exposure times ``camera_scale`` (0: static camera)
    and the sprites' and objects' displacement times ``object_speed_scale``."""
    for name, value in (("camera_scale", camera_scale), ("object_speed_scale", object_speed_scale)):
        _check(
            isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
            f"{name} must be a finite number >= 0 (1 keeps the preset's speed), got {value!r}",
        )
    changes = {}
    if camera_scale != 1.0:
        changes.update(
            blur_fraction=tuple(camera_scale * v for v in motion.blur_fraction),
            rotation_deg=camera_scale * motion.rotation_deg,
            zoom_ratio=min(camera_scale * motion.zoom_ratio, 0.49),
        )
    if object_speed_scale != 1.0:
        changes.update(
            sprite_blur_fraction=tuple(object_speed_scale * v for v in motion.sprite_blur_fraction),
            object_blur_fraction=tuple(object_speed_scale * v for v in motion.object_blur_fraction),
        )
    return replace(motion, **changes) if changes else motion


def scaled_sensor(sensor: SensorConfig, threshold_scale: float = 1.0, **changes) -> SensorConfig:
    """``sensor`` with its threshold times ``threshold_scale`` (2 on the gopro preset: the paper's V_th 2 x 2)
    and other fields replaced (``dark_spike_rate=...``, ``hot_pixel_fraction=...``); validated."""
    _check(
        isinstance(threshold_scale, (int, float)) and math.isfinite(threshold_scale) and threshold_scale > 0,
        f"threshold_scale must be a finite number > 0 (1 keeps the preset's threshold), got {threshold_scale!r}",
    )
    if threshold_scale != 1.0:
        changes["threshold"] = threshold_scale * sensor.threshold
    return replace(sensor, **changes) if changes else sensor


@dataclass(frozen=True)
class SimConfig:
    """One simulated hybrid-rig recording. Build from a preset: ``preset("gopro", exposure_frames=49)``."""

    name: str
    rgb_height: int
    rgb_width: int
    spike_height: int
    spike_width: int
    rate_hz: float
    exposure_frames: int  # spike frames an exposure covers (duration = (frames - 1) spike periods)
    margin_frames: int = 20  # spike frames before the first / after the last exposure (>= 10)
    gap_frames: int | None = None  # spike frames between an exposure's last and the next's first; None: 2*margin
    k: int = DEFAULT_K  # ground-truth frames per exposure
    t0_ns: int = 0  # timestamp of spike frame 0
    sensor: SensorConfig = field(default_factory=SensorConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    sprites: int = 0  # independently moving objects per exposure
    scene: str = "images"  # "images" (default scenes or image files), "checkerboard", "dark" (lens cap)
    checkerboard_squares: tuple[int, int] = (9, 6)  # (columns, rows) of squares on the board
    rgb_noise_std: float = 0.005  # Gaussian RGB sensor noise, in [0, 1] units, before 8-bit quantisation
    linear_light: bool = False  # if True: average (and fire spikes on) sRGB-decoded light, re-encode after
    rgb_homography: tuple[float, ...] | None = None  # canonical pixel -> RGB pixel, 9 numbers row-major
    clock_offset_ns: int = 0  # RGB clock - spike clock, added to the exposure timestamps written
    clock_drift_ppm: float = 0.0  # RGB clock rate error, parts per million

    def __post_init__(self):
        for name in ("rgb_height", "rgb_width", "spike_height", "spike_width", "exposure_frames", "margin_frames"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value > 0, f"{name} must be a positive integer, got {value!r}")
        _check(
            (self.spike_height * self.spike_width) % 8 == 0,
            f"spike geometry {self.spike_height}x{self.spike_width}: pixel count must be a multiple of 8 to pack",
        )
        _finite("rate_hz", self.rate_hz)
        _check(self.rate_hz > 0, f"rate_hz must be > 0, got {self.rate_hz}")
        _check(self.exposure_frames >= 2, f"exposure_frames must be >= 2, got {self.exposure_frames}")
        _check(
            self.margin_frames >= DEFAULT_MARGIN_FRAMES,
            f"margin_frames must be >= {DEFAULT_MARGIN_FRAMES} (half the LDN spike window), got {self.margin_frames}",
        )
        if self.gap_frames is not None:
            _check(isinstance(self.gap_frames, int) and self.gap_frames >= 0, "gap_frames must be an integer >= 0")
        _check(isinstance(self.k, int) and self.k >= 1, f"k must be an integer >= 1, got {self.k!r}")
        _check(isinstance(self.t0_ns, int) and self.t0_ns >= 0, "t0_ns must be an integer >= 0")
        _check(isinstance(self.sprites, int) and self.sprites >= 0, "sprites must be an integer >= 0")
        _check(self.scene in SCENE_KINDS, f"scene must be one of {SCENE_KINDS}, got {self.scene!r}")
        columns, rows = self.checkerboard_squares
        _check(columns >= 2 and rows >= 2, "checkerboard_squares must be at least (2, 2)")
        _finite("rgb_noise_std", self.rgb_noise_std)
        _check(self.rgb_noise_std >= 0, "rgb_noise_std must be >= 0")
        _check(isinstance(self.clock_offset_ns, int), "clock_offset_ns must be an integer number of ns")
        _finite("clock_drift_ppm", self.clock_drift_ppm)
        _check(abs(self.clock_drift_ppm) < 1e5, "clock_drift_ppm must be within +-1e5")
        if self.rgb_homography is None:
            _check(
                (self.rgb_height, self.rgb_width)
                == (SPIKE_TO_IMAGE_SCALE * self.spike_height, SPIKE_TO_IMAGE_SCALE * self.spike_width),
                f"RGB {self.rgb_width}x{self.rgb_height} must be exactly {SPIKE_TO_IMAGE_SCALE}x the spikes "
                f"({SPIKE_TO_IMAGE_SCALE * self.spike_width}x{SPIKE_TO_IMAGE_SCALE * self.spike_height}) unless an "
                "rgb_homography is set",
            )
        else:
            values = tuple(float(v) for v in self.rgb_homography)
            _check(len(values) == 9 and all(math.isfinite(v) for v in values), "rgb_homography needs 9 finite numbers")
            object.__setattr__(self, "rgb_homography", values)
            det = (
                values[0] * (values[4] * values[8] - values[5] * values[7])
                - values[1] * (values[3] * values[8] - values[5] * values[6])
                + values[2] * (values[3] * values[7] - values[4] * values[6])
            )
            _check(abs(det) > 1e-12, "rgb_homography is singular")

    @property
    def canonical_height(self) -> int:
        return SPIKE_TO_IMAGE_SCALE * self.spike_height

    @property
    def canonical_width(self) -> int:
        return SPIKE_TO_IMAGE_SCALE * self.spike_width

    @property
    def effective_gap_frames(self) -> int:
        return 2 * self.margin_frames if self.gap_frames is None else self.gap_frames

    @property
    def frame_period_ns(self) -> float:
        return 1e9 / self.rate_hz

    def with_changes(self, **changes) -> "SimConfig":
        """A validated copy with some fields replaced (sensor/motion fields may be given as dicts)."""
        for name, cls in (("sensor", SensorConfig), ("motion", MotionConfig)):
            if isinstance(changes.get(name), dict):
                changes[name] = replace(getattr(self, name), **changes[name])
        return replace(self, **changes)


PRESETS: dict[str, SimConfig] = {
    # The paper's synthetic GOPRO protocol: 1920 Hz virtual spike clock, 97-frame exposures, 20-frame margins,
    # 1.985 * I against a threshold of 2.0, ~0.71 % noise spikes.
    "gopro": SimConfig(
        name="gopro",
        rgb_height=720,
        rgb_width=1280,
        spike_height=180,
        spike_width=320,
        rate_hz=1920.0,
        exposure_frames=97,
        margin_frames=20,
    ),
    # The paper's real rig geometry: 20 kHz, 15 ms exposures. A real sensor fires well below once per tick.
    "rsb": SimConfig(
        name="rsb",
        rgb_height=1000,
        rgb_width=1600,
        spike_height=250,
        spike_width=400,
        rate_hz=20000.0,
        exposure_frames=300,
        margin_frames=20,
        sensor=SensorConfig(
            gain=1.0,
            threshold=4.0,
            dark_spike_rate=0.001,
            threshold_mismatch=0.03,
            hot_pixel_fraction=0.0005,
            hot_pixel_rate=0.5,
        ),
    ),
    # Small and fast, for tests.
    "tiny": SimConfig(
        name="tiny",
        rgb_height=160,
        rgb_width=256,
        spike_height=40,
        spike_width=64,
        rate_hz=1920.0,
        exposure_frames=33,
        margin_frames=10,
    ),
}


def preset(name: str, **changes) -> SimConfig:
    """The named preset (``gopro``, ``rsb``, ``tiny``), with optional field changes."""
    if name not in PRESETS:
        raise ConfigError(f"unknown simulator preset {name!r}; choose one of {sorted(PRESETS)}")
    config = PRESETS[name]
    return config.with_changes(**changes) if changes else config
