"""Simulate one hybrid-rig recording (SPEC §2-§5): a continuous spike stream, blurry RGB exposures placed
on it, and sharp ground truth at each exposure's K output timestamps.

Time layout (spike frames): ``lead`` frames, then exposures of ``exposure_frames`` frames separated by
``gap_frames``, then ``trail`` frames; lead and trail are at least ``margin_frames`` (more when a clock
offset/drift shifts the written timestamps, so that every written window stays inside the data). Each
exposure is its own shot (scene + trajectory + sprites); the cut to the next shot sits in the middle of the
gap. The sensor state (accumulator) runs on across shots: the stream is continuous.

Clocks: spike frame ``n`` is at ``t0_ns + n / rate_hz``. ``exposures.csv`` holds exposure times on the RGB
clock: ``rgb(t) = t + clock_offset_ns + clock_drift_ppm * 1e-6 * (t - t0_ns)``; ``gt.csv`` holds the
output timestamps of those written exposures (what a reader computes from ``exposures.csv``), and each GT
image is the scene at the matching true (spike-clock) time. ``sim_truth.json`` beside the recording holds
the truth: spike-clock exposure times, frame indices, the homography, the clock model, hot pixels, scenes.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from spikereveal.errors import ConfigError
from spikereveal.kernels.timing import exposure_window, index_to_time, output_timestamps
from spikereveal.sim.config import SimConfig
from spikereveal.sim.motion import sample_camera, sample_object, sample_sprite
from spikereveal.sim.procedural import GENERATORS
from spikereveal.sim.render import Grid, Shot, render, spike_intensity
from spikereveal.sim.rgb import blurry_frame, sharp_frame
from spikereveal.sim.scenes import (
    GENERATED_SCENE_SCALE,
    MIXED_FAMILIES,
    SKIMAGE_SPLITS,
    as_scene_images,
    checkerboard_image,
    default_scene_images,
    family_scene_images,
    scene_light,
)
from spikereveal.sim.spikes import fire_spikes, new_sensor_state

log = logging.getLogger(__name__)

TRUTH_FILE = "sim_truth.json"
SPIKE_CHUNK_FRAMES = 64


@dataclass(frozen=True)
class ExposurePlan:
    """Where one exposure sits on the spike stream (true, spike-clock times)."""

    index: int
    first_frame: int  # first spike frame inside the exposure
    stop_frame: int  # one past the last
    shot_first: int  # first spike frame rendered from this exposure's shot
    shot_stop: int
    start_ns: int
    duration_ns: int
    written_start_ns: int  # on the RGB clock, as written to exposures.csv
    written_duration_ns: int


@dataclass(frozen=True)
class Layout:
    exposures: tuple[ExposurePlan, ...]
    frame_count: int
    lead_frames: int
    trail_frames: int


def rgb_clock(config: SimConfig, t_ns: int) -> int:
    """A spike-clock time as the RGB camera's clock reads it."""
    drift = config.clock_drift_ppm * 1e-6 * (int(t_ns) - config.t0_ns)
    return int(t_ns) + config.clock_offset_ns + int(round(drift))


def _layout_with(config: SimConfig, exposures: int, lead: int, trail: int) -> Layout:
    frames, gap = config.exposure_frames, config.effective_gap_frames
    firsts = [lead + i * (frames + gap) for i in range(exposures)]
    total = firsts[-1] + frames + trail
    plans = []
    for i, first in enumerate(firsts):
        stop = first + frames
        shot_first = 0 if i == 0 else first - gap + gap // 2
        shot_stop = total if i == exposures - 1 else stop + gap // 2
        start = int(index_to_time(first, config.t0_ns, config.rate_hz))
        end = int(index_to_time(stop - 1, config.t0_ns, config.rate_hz))
        written_start = rgb_clock(config, start)
        plans.append(
            ExposurePlan(i, first, stop, shot_first, shot_stop, start, end - start, written_start,
                         rgb_clock(config, end) - written_start)
        )
    return Layout(tuple(plans), total, lead, trail)


def plan_layout(config: SimConfig, exposures: int) -> Layout:
    """Place ``exposures`` exposures on the spike stream; every written window lies inside the data."""
    if not isinstance(exposures, (int, np.integer)) or exposures < 1:
        raise ConfigError(f"the number of exposures must be a positive integer, got {exposures!r}")
    period = config.frame_period_ns
    if config.effective_gap_frames < 2 * config.margin_frames:
        log.warning(
            "gap_frames %d < 2 * margin_frames: consecutive windows overlap and the scene cut between shots "
            "falls inside them (fine for stream tests, avoid for training data)", config.effective_gap_frames,
        )
    lead = trail = config.margin_frames
    for _ in range(10):  # the drift shift depends on the layout's length; margins only grow, 2-3 passes settle
        layout = _layout_with(config, int(exposures), lead, trail)
        # how many frames the written (RGB-clock) exposures sit before / after the true ones
        shifts = [(p.written_start_ns - p.start_ns) / period for p in layout.exposures]
        shifts += [(p.written_start_ns + p.written_duration_ns - p.start_ns - p.duration_ns) / period
                   for p in layout.exposures]
        new_lead = config.margin_frames + (math.ceil(-min(shifts)) + 1 if min(shifts) < 0 else 0)
        new_trail = config.margin_frames + (math.ceil(max(shifts)) + 1 if max(shifts) > 0 else 0)
        new_lead, new_trail = max(lead, new_lead), max(trail, new_trail)
        if (new_lead, new_trail) == (lead, trail):
            break
        lead, trail = new_lead, new_trail
    else:
        raise ConfigError(f"clock drift {config.clock_drift_ppm} ppm is too large to keep the windows in the data")
    for plan in layout.exposures:  # the contract: an exposure covers frames index(start)..index(end)
        window = exposure_window(plan.start_ns, plan.duration_ns, config.t0_ns, config.rate_hz, config.k,
                                 config.margin_frames)
        if (window.exposure_first, window.exposure_stop) != (plan.first_frame, plan.stop_frame):
            raise ConfigError(
                f"rate {config.rate_hz} Hz: exposure {plan.index} times do not map back to its frames; "
                "choose a rate whose period is not pathologically close to a rounding boundary"
            )
    return layout


def _scene_source(config: SimConfig, scenes) -> tuple[str, list[tuple[str, np.ndarray]] | None]:
    """(scene family, fixed image list or None for generated/mixed families)."""
    if config.scene == "dark":
        return "dark", []
    if config.scene == "checkerboard":
        columns, rows = config.checkerboard_squares
        return "checkerboard", [("checkerboard", checkerboard_image(columns, rows, pad_ratio=2.5))]
    if scenes is None:
        return "default", default_scene_images()
    if isinstance(scenes, str):
        return scenes, family_scene_images(scenes)
    return "images", as_scene_images(scenes)


class _SceneDrawer:
    """Draws each exposure's background image and the images its sprites and objects are cut from.

    Fixed lists (the default scenes, an skimage split, the user's images) are walked in seeded random
    permutations, and sprites come from another list image (exactly as before families existed, so the
    default recording keeps its bytes); generated families make a new ``GENERATED_SCENE_SCALE``-times-the-
    frame image per exposure, plus one smaller image per exposure for its sprites and objects; a mixed
    family draws the family of each image first."""

    def __init__(self, config: SimConfig, family: str, images):
        self.config = config
        self.family = family
        self.lists: dict[str, list] = {}
        self.orders: dict[str, list[int]] = {}
        self.lights: dict[tuple[str, int], np.ndarray] = {}
        self.other_light: np.ndarray | None = None
        if images is not None:
            self.lists[family] = images
        else:
            for member in MIXED_FAMILIES.get(family, (family,)):
                if member in SKIMAGE_SPLITS:
                    self.lists[member] = family_scene_images(member)
        width, height = config.canonical_width, config.canonical_height
        self.scene_size = (int(round(GENERATED_SCENE_SCALE * width)), int(round(GENERATED_SCENE_SCALE * height)))
        self.other_size = (min(width, 640), min(height, 640))

    def _member(self, rng: np.random.Generator) -> str:
        members = MIXED_FAMILIES.get(self.family)
        return self.family if members is None else members[int(rng.integers(len(members)))]

    def _list_light(self, member: str, index: int) -> np.ndarray:
        if (member, index) not in self.lights:
            self.lights[member, index] = scene_light(self.lists[member][index][1], self.config.linear_light)
        return self.lights[member, index]

    def background(self, rng: np.random.Generator) -> tuple[str, str, int, np.ndarray]:
        """(image name, its family, its index in a list or -1, its light); a new exposure starts."""
        self.other_light = None
        member = self._member(rng)
        if member in GENERATORS:
            image = GENERATORS[member](rng, self.scene_size)
            return member, member, -1, scene_light(image, self.config.linear_light)
        if not self.orders.get(member):
            self.orders[member] = list(rng.permutation(len(self.lists[member])))
        index = int(self.orders[member].pop())
        return self.lists[member][index][0], member, index, self._list_light(member, index)

    def other(self, rng: np.random.Generator, member: str, index: int) -> np.ndarray:
        """The light a sprite or object is cut from: another list image than the background's, or this
        exposure's extra generated image."""
        if self.family in self.lists:  # a plain list family
            count = len(self.lists[member])
            other = int(rng.integers(count))
            if count > 1 and other == index:
                other = (other + 1) % count
            return self._list_light(member, other)
        if self.other_light is None:
            other_member = self._member(rng)
            if other_member in GENERATORS:
                image = GENERATORS[other_member](rng, self.other_size)
                self.other_light = scene_light(image, self.config.linear_light)
            else:
                count = len(self.lists[other_member])
                other = int(rng.integers(count))
                if count > 1 and other_member == member and other == index:
                    other = (other + 1) % count
                self.other_light = self._list_light(other_member, other)
        return self.other_light


def _iter_shots(config: SimConfig, layout: Layout, family: str, images, rng: np.random.Generator) -> Iterator[Shot]:
    """Each exposure's shot, in order, drawn from ``rng`` (lazily: a generated scene lives one shot long)."""
    if config.scene == "dark":
        for _ in layout.exposures:
            yield Shot("dark", None, None, family="dark")
        return
    frame_size = (config.canonical_width, config.canonical_height)
    drawer = _SceneDrawer(config, family, images)
    for plan in layout.exposures:
        name, member, index, source = drawer.background(rng)
        t_centre = plan.start_ns + plan.duration_ns / 2.0
        duration = float(plan.duration_ns)
        first_t = float(index_to_time(plan.shot_first, config.t0_ns, config.rate_hz))
        last_t = float(index_to_time(plan.shot_stop - 1, config.t0_ns, config.rate_hz))
        reach = max(0.5, abs(first_t - t_centre) / duration, abs(last_t - t_centre) / duration)
        camera = sample_camera(
            rng, config.motion, (source.shape[1], source.shape[0]), frame_size, t_centre, duration, reach
        )
        sprites = []
        for _ in range(config.sprites):
            other = drawer.other(rng, member, index)
            sprites.append(sample_sprite(rng, config.motion, other, frame_size, t_centre, duration))
        objects = 0
        if config.motion.family == "objects":
            low, high = config.motion.object_count
            objects = int(rng.integers(low, high + 1))
            for _ in range(objects):
                other = drawer.other(rng, member, index)
                sprites.append(sample_object(rng, config.motion, other, frame_size, t_centre, duration))
        yield Shot(name, source, camera, tuple(sprites), family=member, objects=objects)


def _shot_truth(shot: Shot) -> dict:
    objects = shot.sprites[len(shot.sprites) - shot.objects :]
    return {
        "scene": shot.name,
        "scene_family": shot.family,
        "sprites": len(shot.sprites) - shot.objects,
        "objects": shot.objects,
        "blur_vector_px": None if shot.camera is None else list(shot.camera.velocity_xy),
        "object_velocities_px": [list(o.velocity_xy) for o in objects],
    }


def _truth(config: SimConfig, layout: Layout, shots: list[dict], sensor, seed, family: str, labels) -> dict:
    truth = {
        "seed": seed,
        "config": asdict(config),
        "scene_family": family,
        "motion_family": config.motion.family,
        "sensor": asdict(config.sensor),
        "clock": {"offset_ns": config.clock_offset_ns, "drift_ppm": config.clock_drift_ppm,
                  "model": "rgb_ns = t_ns + offset_ns + drift_ppm * 1e-6 * (t_ns - t0_ns)"},
        "rgb_homography": None if config.rgb_homography is None else [
            list(config.rgb_homography[0:3]), list(config.rgb_homography[3:6]), list(config.rgb_homography[6:9])
        ],
        "frame_count": layout.frame_count,
        "lead_frames": layout.lead_frames,
        "trail_frames": layout.trail_frames,
        "exposures": [
            {**asdict(plan), **shot} for plan, shot in zip(layout.exposures, shots)
        ],
        "hot_pixels": sensor.hot_pixels.tolist(),
    }
    if labels:
        truth["labels"] = dict(labels)
    return truth


def _random_streams(seed) -> list[np.random.Generator]:
    """Independent streams (scenes/motion, sensor fixed pattern, spike noise, RGB noise) from one seed."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    return [np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence(int(seed)).spawn(4)]


def _shot_stream(config: SimConfig, seed: int, exposures: int, scenes) -> tuple[Layout, str, Iterator[Shot]]:
    layout = plan_layout(config, exposures)
    scene_rng = _random_streams(seed)[0]
    family, images = _scene_source(config, scenes)
    return layout, family, _iter_shots(config, layout, family, images, scene_rng)


def plan_shots(config: SimConfig, seed: int, exposures: int, scenes: Sequence | str | None = None):
    """The layout and the shot of every exposure that ``simulate_recording`` with these arguments uses
    (so that tests and tools can re-render any instant of a simulated recording)."""
    layout, _, shots = _shot_stream(config, seed, exposures, scenes)
    return layout, list(shots)


def simulate_recording(
    config: SimConfig,
    out_dir: str | Path,
    seed: int,
    exposures: int,
    scenes: Sequence | str | None = None,
    progress: Callable[[int], None] | None = None,
    overwrite: bool = False,
    labels: dict | None = None,
) -> Path:
    """Write one simulated recording to ``out_dir``; returns its path.

    ``scenes``: a scene family name (``SCENE_FAMILIES``: ``deadleaves``, ``skimage-val``, ``mixed-train``, ...),
    or images (uint8 HWC BGR or float [0, 1]) or (name, image) pairs; default (None or ``"default"``):
    scikit-image's ``DEFAULT_SCENE_NAMES``. Ignored for the checkerboard and dark scenes. ``progress(1)`` is
    called per exposure. ``labels``: JSON-able notes stored under ``labels`` in ``sim_truth.json``.
    The same (config, seed, exposures, scenes) gives a byte-identical recording.
    """
    from spikereveal.recording import RecordingWriter, RgbMeta, SpikeMeta

    layout, family, shot_stream = _shot_stream(config, seed, exposures, scenes)
    shots: list[dict] = []  # what the truth says of each shot (shots are made one at a time: images are big)
    _, sensor_rng, spike_rng, rgb_rng = _random_streams(seed)
    sensor = new_sensor_state(config.sensor, config.spike_height, config.spike_width, sensor_rng)

    canonical = Grid(config.canonical_width, config.canonical_height)
    rgb_grid = None
    if config.rgb_homography is not None:
        rgb_grid = Grid(config.rgb_width, config.rgb_height, np.asarray(config.rgb_homography).reshape(3, 3))
    spike_meta = SpikeMeta(
        config.spike_height, config.spike_width, float(config.rate_hz), config.t0_ns, flip_rows=False, bit_order="little"
    )
    notes = f"simulated by spikereveal (preset {config.name}, seed {int(seed)}); truth in {TRUTH_FILE}"

    chunk = np.empty((SPIKE_CHUNK_FRAMES, config.spike_height, config.spike_width), dtype=np.float32)
    filled = 0
    out_dir = Path(out_dir)
    with RecordingWriter(out_dir, spike_meta, RgbMeta(config.rgb_height, config.rgb_width), config.name, notes,
                         overwrite=overwrite) as writer:
        (out_dir / TRUTH_FILE).unlink(missing_ok=True)  # an overwritten recording is incomplete until the end
        for plan, shot in zip(layout.exposures, shot_stream):
            shots.append(_shot_truth(shot))
            light_sum = np.zeros((config.rgb_height, config.rgb_width, 3), dtype=np.float32)
            for frame in range(plan.shot_first, plan.shot_stop):
                t_ns = float(index_to_time(frame, config.t0_ns, config.rate_hz))
                light = render(shot, t_ns, canonical)
                chunk[filled] = spike_intensity(light)
                filled += 1
                if filled == SPIKE_CHUNK_FRAMES:
                    writer.append_spikes(fire_spikes(chunk, sensor, spike_rng))
                    filled = 0
                if plan.first_frame <= frame < plan.stop_frame:
                    light_sum += light if rgb_grid is None else render(shot, t_ns, rgb_grid)
            blurry = blurry_frame(light_sum, config.exposure_frames, config.linear_light, config.rgb_noise_std, rgb_rng)
            index = writer.add_exposure(plan.written_start_ns, plan.written_duration_ns, blurry)
            written_times = output_timestamps(plan.written_start_ns, plan.written_duration_ns, config.k)
            true_times = output_timestamps(plan.start_ns, plan.duration_ns, config.k)
            for written_t, true_t in zip(written_times, true_times):
                gt = sharp_frame(render(shot, float(true_t), canonical), config.linear_light)
                writer.add_ground_truth(index, int(written_t), gt)
            if progress is not None:
                progress(1)
        if filled:
            writer.append_spikes(fire_spikes(chunk[:filled], sensor, spike_rng))
    truth = _truth(config, layout, shots, sensor, int(seed), family, labels)
    (out_dir / TRUTH_FILE).write_text(json.dumps(truth, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return out_dir
