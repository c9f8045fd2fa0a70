"""Named suites of simulated recordings, defined here once as tables of frozen entries.

``generalisation`` (``spikereveal simulate --suite generalisation --out DIR``) writes one recording per entry
under ``DIR/<split>/<name>``, all on the gopro preset, each with its own fixed seed:

- ``train`` (8 x 8 exposures): ``mixed-train`` scenes (dead leaves, synthetic, skimage-train), camera motion
  scaled 0.3-1.4 with 0-2 sprites, threshold x0.9-1.5, dark spikes 0.3-1.5 %, some hot pixels and mismatch;
  never the val/test images, the objects motion family or thresholds x2-x4.
- ``val`` (1 x 4 exposures each): ``skimage-val`` with camera motion, with objects, and with threshold x3.
- ``test`` (2 x 4 exposures each, seeds ``_a``/``_b``): ``skimage-test`` with camera motion, with objects,
  with threshold x2 and x4.

``adaptation`` writes the data of the ``adapt`` check, 2 x 8 exposures per rig with seeds that no
``generalisation`` recording uses: a validation rig that chooses ``adapt``'s settings (``skimage-val`` scenes at
threshold x3, ``DIR/val/adapt_th3_{a,b}``) and the rig it is reported on (unseen ``skimage-test`` scenes at
threshold x4, ``DIR/test/adapt_th4_{a,b}``). ``spikereveal adapt`` trains on one rig and reports on its own
held-out exposures. ``DIR/test/adapt_th1_{a,b}`` film the x4 rig's scenes with its motion (same seeds) on the preset's
sensor: the student's in-domain figure on the same content, which ``adapt`` on the x4 rig is measured against.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spikereveal.errors import ConfigError
from spikereveal.sim.config import MOTION_FAMILIES, SimConfig, motion_family, preset, scaled_motion, scaled_sensor
from spikereveal.sim.scenes import check_scene_family
from spikereveal.sim.simulate import TRUTH_FILE, simulate_recording

SPLITS = ("train", "val", "test")
_NAME = re.compile(r"^[a-z0-9_]+$")


@dataclass(frozen=True)
class SuiteEntry:
    """One recording of a suite: where it goes, its seed, scenes, motion and sensor (None: the preset's)."""

    split: str
    name: str
    seed: int
    exposures: int
    scenes: str  # a scene family (spikereveal.sim.scenes.SCENE_FAMILIES)
    motion: str = "camera"  # a motion family (spikereveal.sim.config.MOTION_FAMILIES)
    motion_scale: float = 1.0  # camera blur, roll and zoom per exposure x this
    object_speed_scale: float = 1.0  # sprite and object displacement per exposure x this
    sprites: int = 0
    threshold_scale: float = 1.0  # sensor threshold x this
    noise_rate: float | None = None  # dark spikes per pixel-frame
    hot_pixel_fraction: float | None = None
    threshold_mismatch: float | None = None
    preset: str = "gopro"

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ConfigError(f"suite entry {self.name}: split must be one of {SPLITS}, got {self.split!r}")
        if not _NAME.match(self.name):
            raise ConfigError(f"suite entry name {self.name!r}: use lower-case letters, digits and _ only")
        counts_ok = isinstance(self.exposures, int) and self.exposures >= 1
        if not (isinstance(self.seed, int) and self.seed >= 0 and counts_ok):
            raise ConfigError(f"suite entry {self.name}: seed must be >= 0 and exposures >= 1")
        check_scene_family(self.scenes)
        if self.motion not in MOTION_FAMILIES:
            raise ConfigError(f"suite entry {self.name}: motion must be one of {MOTION_FAMILIES}")
        self.config()  # validates every value now, not when the suite is half written

    def config(self, preset_name: str | None = None, **changes) -> SimConfig:
        """The entry's simulator config (on ``preset_name`` instead of its preset, e.g. ``tiny`` for tests; ``changes``:
        other fields of the preset, e.g. a rig's geometry)."""
        base = preset(preset_name or self.preset, **changes)
        motion = scaled_motion(motion_family(self.motion, base.motion), self.motion_scale, self.object_speed_scale)
        sensor_changes = {
            key: value
            for key, value in (("dark_spike_rate", self.noise_rate), ("hot_pixel_fraction", self.hot_pixel_fraction),
                               ("threshold_mismatch", self.threshold_mismatch))
            if value is not None
        }
        sensor = scaled_sensor(base.sensor, self.threshold_scale, **sensor_changes)
        return base.with_changes(motion=motion, sensor=sensor, sprites=self.sprites)

    def exposure_count(self, exposures_scale: float = 1.0) -> int:
        """Exposures to write: ``exposures * exposures_scale``, rounded, at least 1."""
        if not (isinstance(exposures_scale, (int, float)) and math.isfinite(exposures_scale) and exposures_scale > 0):
            raise ConfigError(
                f"exposures_scale must be a finite number > 0 (1: the suite's counts), got {exposures_scale!r}"
            )
        return max(1, int(round(self.exposures * exposures_scale)))

    def path(self, root: str | Path) -> Path:
        return Path(root) / self.split / self.name


#: The train split's spread, one recording per row: motion scale, sprites, threshold scale, dark-spike rate, hot-pixel
#: fraction, threshold mismatch.
_TRAIN_ROWS = (
    (0.3, 0, 1.0, 0.0071, 0.0, 0.0),
    (0.6, 1, 1.25, 0.003, 0.0005, 0.02),
    (1.0, 2, 0.9, 0.015, 0.0, 0.02),
    (1.4, 0, 1.5, 0.0071, 0.0005, 0.0),
    (0.3, 2, 1.5, 0.003, 0.0, 0.02),
    (0.6, 0, 0.9, 0.0071, 0.0005, 0.02),
    (1.0, 1, 1.0, 0.015, 0.0005, 0.0),
    (1.4, 1, 1.25, 0.003, 0.0, 0.0),
)


def _train() -> tuple[SuiteEntry, ...]:
    return tuple(
        SuiteEntry("train", f"train_{i:02d}", 1000 + i, 8, "mixed-train", motion_scale=scale, object_speed_scale=scale,
                   sprites=sprites, threshold_scale=threshold, noise_rate=noise, hot_pixel_fraction=hot,
                   threshold_mismatch=mismatch)
        for i, (scale, sprites, threshold, noise, hot, mismatch) in enumerate(_TRAIN_ROWS)
    )


def _pair(split: str, name: str, seed: int, exposures: int, scenes: str, **kwargs) -> tuple[SuiteEntry, ...]:
    """Two recordings of one family, ``<name>_a`` and ``<name>_b``, seeds ``seed`` and ``seed + 1``."""
    return tuple(SuiteEntry(split, f"{name}_{tag}", seed + k, exposures, scenes, **kwargs)
                 for k, tag in enumerate(("a", "b")))


def _test(name: str, seed: int, **kwargs) -> tuple[SuiteEntry, ...]:
    return _pair("test", name, seed, 4, "skimage-test", **kwargs)


GENERALISATION: tuple[SuiteEntry, ...] = (
    *_train(),
    SuiteEntry("val", "val_camera", 2001, 4, "skimage-val"),
    SuiteEntry("val", "val_objects", 2002, 4, "skimage-val", motion="objects"),
    SuiteEntry("val", "val_th3", 2003, 4, "skimage-val", threshold_scale=3.0),
    *_test("test_camera", 3001),
    *_test("test_objects", 3011, motion="objects"),
    *_test("test_th2", 3021, threshold_scale=2.0),
    *_test("test_th4", 3031, threshold_scale=4.0),
)

ADAPTATION: tuple[SuiteEntry, ...] = (
    *_pair("val", "adapt_th3", 4021, 8, "skimage-val", threshold_scale=3.0),
    *_pair("test", "adapt_th4", 4031, 8, "skimage-test", threshold_scale=4.0),
    # the x4 rig's very scenes and motion (same seeds) on the preset's sensor: the in-domain reference of adapt_th4
    *_pair("test", "adapt_th1", 4031, 8, "skimage-test"),
)

SUITES: dict[str, tuple[SuiteEntry, ...]] = {"generalisation": GENERALISATION, "adaptation": ADAPTATION}

#: ``adapt``'s sensor-matched recordings take the train split's rows (:data:`_TRAIN_ROWS`: motion, sprites, noise)
#: with these threshold factors instead of theirs, around the rig's threshold (``1 / its firing gain``).
_MATCHED_THRESHOLD_FACTORS = (1.0, 1.05, 0.95, 1.1, 0.9, 1.0, 1.05, 0.95)
MATCHED_EXPOSURES_PER_RECORDING = 8
MATCHED_SEED = 5000  # seeds 5000, 5001, ...: no generalisation or adaptation recording uses them


def sensor_matched(threshold_scale: float, exposures: int, scenes: str = "mixed-train") -> tuple[SuiteEntry, ...]:
    """Training recordings on a sensor like a rig's: ``exposures`` exposures in all, 8 per recording (the last the
    rest), ``scenes`` (default the train split's: dead leaves, synthetic patterns, scikit-image train pictures) under
    the train split's motion and noise spread, at ``threshold_scale`` x 0.9-1.1. ``split`` "train", names
    ``matched_00``, ``matched_01``, ..."""
    if isinstance(exposures, bool) or not isinstance(exposures, int) or exposures < 1:
        raise ConfigError(f"the sensor-matched recordings need at least 1 exposure, got {exposures!r}")
    if not (isinstance(threshold_scale, (int, float)) and math.isfinite(threshold_scale) and threshold_scale > 0):
        raise ConfigError(f"threshold_scale must be a finite number > 0, got {threshold_scale!r}")
    entries = []
    for i, first in enumerate(range(0, exposures, MATCHED_EXPOSURES_PER_RECORDING)):
        scale, sprites, _, noise, hot, mismatch = _TRAIN_ROWS[i % len(_TRAIN_ROWS)]
        factor = _MATCHED_THRESHOLD_FACTORS[i % len(_MATCHED_THRESHOLD_FACTORS)]
        entries.append(SuiteEntry(
            "train", f"matched_{i:02d}", MATCHED_SEED + i, min(MATCHED_EXPOSURES_PER_RECORDING, exposures - first),
            scenes, motion_scale=scale, object_speed_scale=scale, sprites=sprites,
            threshold_scale=round(float(threshold_scale) * factor, 4), noise_rate=noise, hot_pixel_fraction=hot,
            threshold_mismatch=mismatch))
    return tuple(entries)


def suite(name: str) -> tuple[SuiteEntry, ...]:
    if name not in SUITES:
        raise ConfigError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)}")
    return SUITES[name]


def recording_complete(path: str | Path) -> bool:
    """A simulated recording is complete once its ``sim_truth.json`` is written (it is written last)."""
    return (Path(path) / TRUTH_FILE).is_file()


def write_entry(
    entry: SuiteEntry,
    root: str | Path,
    exposures_scale: float = 1.0,
    overwrite: bool = False,
    preset_name: str | None = None,
    suite_name: str = "",
    progress: Callable[[int], None] | None = None,
    changes: Mapping[str, Any] | None = None,
) -> Path:
    """Simulate one suite entry into ``root/<split>/<name>`` (an incomplete one there is replaced; a complete
    one only with ``overwrite``). The entry is recorded under ``labels`` in its ``sim_truth.json``. ``changes``:
    preset fields to replace (a rig's geometry, ``k``)."""
    path, changes = entry.path(root), dict(changes or {})
    labels = {"suite": suite_name, **asdict(entry), "preset": preset_name or entry.preset, **changes}
    config = entry.config(preset_name, **changes)
    return simulate_recording(
        config, path, entry.seed, entry.exposure_count(exposures_scale), scenes=entry.scenes, progress=progress,
        overwrite=overwrite or not recording_complete(path), labels=labels,
    )
