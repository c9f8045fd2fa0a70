"""Training data for BSN, SR and LDN: seeded random aligned crops from recordings (SPEC §3).

Every exposure of every recording whose spike window lies inside its ``spikes.dat`` is loaded once into an
:class:`ExposureData` (blurry frame, packed spikes of its window, the window's indices). The datasets then
draw crops on the spike grid (``crop`` × ``crop``) and the aligned image crops (4× that, at 4× the origin).

Sampling is a pure function of ``(seed, epoch, item index)``: an epoch can be replayed exactly, a resumed
run continues with the very crops it would have seen, and DataLoader workers need no seeding of their own.
Call ``set_epoch(epoch)`` before each epoch.

What is expensive is computed once per exposure and cached in memory: the long TFP and gray frame (SR), the
LDN's 21-frame spike inputs and the teacher's targets at the M timestamps (LDN). Teacher targets are kept
as float16 (half the memory; ~5e-4 error at 1.0, below an 8-bit image's quantisation).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from spikereveal.errors import ConfigError
from spikereveal.kernels.timing import DEFAULT_K, DEFAULT_MARGIN_FRAMES, LDN_SPIKE_WINDOW, ExposureWindow
from spikereveal.training.train_config import (
    DEFAULT_LDN_TIMESTAMPS, DEFAULT_TFP_SHORT_WINDOW, check_tfp_window, distilled_positions)
from spikereveal.kernels.images import SPIKE_TO_IMAGE_SCALE

log = logging.getLogger(__name__)

#: Image grid / spike grid ratio that the SR and the LDN are built for.
GRAY_WEIGHTS_BGR = np.array([0.11, 0.59, 0.3], dtype=np.float32)

#: ``teacher(exposure, centers) -> (M, 3, H, W) float32`` targets of the student at spike indices ``centers``.
TeacherFn = Callable[["ExposureData", np.ndarray], np.ndarray]
#: ``progress(done, total, what)``: called while loading/precomputing.
LoadProgress = Callable[[int, int, str], None]


def gray_image(bgr: np.ndarray) -> np.ndarray:
    """``(H, W)`` gray of a ``(3, H, W)`` BGR image: 0.3 R + 0.59 G + 0.11 B."""
    return np.tensordot(GRAY_WEIGHTS_BGR, np.asarray(bgr, dtype=np.float32), axes=1).astype(np.float32)


@dataclass(frozen=True, eq=False)
class ExposureData:
    """One exposure, loaded: its blurry frame and the packed spikes of its whole window."""

    recording: str  # path of the recording directory
    exposure_index: int  # the exposure's index in the recording's exposures.csv
    blurry: np.ndarray  # (3, H, W) float32 BGR in [0, 1]
    packed: np.ndarray  # canonical packed frames [window.window_first, window.window_stop)
    window: ExposureWindow  # with centers at the K output timestamps asked for when loading
    spike_height: int
    spike_width: int

    @property
    def first_index(self) -> int:
        """Spike index of ``packed[0]``."""
        return int(self.window.window_first)

    def tfp_short(self, center: int, window: int = DEFAULT_TFP_SHORT_WINDOW) -> np.ndarray:
        """TFP over ``window`` frames centred at spike index ``center``: ``(h, w)`` float32."""
        from spikereveal.kernels import tfp

        return tfp(self.packed, self.spike_height, self.spike_width, int(center), int(window), self.first_index)

    def tfp_shorts(self, centers: np.ndarray, window: int = DEFAULT_TFP_SHORT_WINDOW) -> np.ndarray:
        """TFPs over ``window`` frames centred at each of ``centers``: ``(K, h, w)`` float32."""
        from spikereveal.kernels import tfp_stack

        centers = np.asarray(centers, dtype=np.int64)
        return tfp_stack(self.packed, self.spike_height, self.spike_width, centers, int(window), self.first_index)

    def tfp_long(self) -> np.ndarray:
        """TFP over every spike frame of the exposure: ``(h, w)`` float32."""
        from spikereveal.kernels import tfp_range

        return tfp_range(
            self.packed, self.spike_height, self.spike_width,
            int(self.window.exposure_first), int(self.window.exposure_stop), self.first_index,
        )

    def ldn_inputs(self, centers: np.ndarray, window: int = LDN_SPIKE_WINDOW) -> np.ndarray:
        """The student's raw spike inputs at ``centers``: ``(K, window, h, w)`` float32 of 0/1."""
        from spikereveal.kernels import extract_ldn_input

        return extract_ldn_input(
            self.packed, self.spike_height, self.spike_width, np.asarray(centers, dtype=np.int64),
            window=window, first_index=self.first_index,
        )


def exposure_gain(exposure: ExposureData, k: int = DEFAULT_K) -> float:
    """The firing gain of an exposure as the deployed student measures it (``engines.ldn.firing_gain``): the
    mean spike rate of its ``k`` output windows over the mean gray of its blurry frame, clamped."""
    from spikereveal.kernels.sensor import FIRING_GAIN_MAX, FIRING_GAIN_MIN, MIN_GRAY_MEAN, gray_mean

    rate = float(exposure.ldn_inputs(evenly_spread_centers(exposure.window, k)).mean())
    gray = max(gray_mean(exposure.blurry), MIN_GRAY_MEAN)
    return float(np.clip(rate / gray, FIRING_GAIN_MIN, FIRING_GAIN_MAX))


def evenly_spread_centers(window: ExposureWindow, count: int) -> np.ndarray:
    """``count`` spike indices spread evenly over the exposure, first and last frame included."""
    if count < 1:
        raise ConfigError(f"the number of timestamps per exposure must be >= 1, got {count}")
    last = window.exposure_stop - 1
    if count == 1:
        return np.array([(window.exposure_first + last) // 2], dtype=np.int64)
    return np.rint(np.linspace(window.exposure_first, last, count)).astype(np.int64)


def check_geometry(recording, path) -> tuple[int, int]:
    """Spike (h, w) of a recording whose RGB frames are exactly 4× its spike frames; else ConfigError."""
    spike, rgb = recording.meta.spike, recording.meta.rgb
    h, w = int(spike.height), int(spike.width)
    if int(rgb.height) % SPIKE_TO_IMAGE_SCALE or int(rgb.width) % SPIKE_TO_IMAGE_SCALE:
        raise ConfigError(
            f"{path}: RGB frames are {rgb.height}x{rgb.width}; the networks need height and width divisible "
            f"by {SPIKE_TO_IMAGE_SCALE}. Crop or warp the recording onto the canonical grid (4x the spike grid) first"
        )
    if (int(rgb.height), int(rgb.width)) != (SPIKE_TO_IMAGE_SCALE * h, SPIKE_TO_IMAGE_SCALE * w):
        raise ConfigError(
            f"{path}: RGB frames are {rgb.height}x{rgb.width} but the spike frames are {h}x{w}; training and "
            f"evaluation need RGB = exactly {SPIKE_TO_IMAGE_SCALE}x the spike grid ({SPIKE_TO_IMAGE_SCALE * h}x{SPIKE_TO_IMAGE_SCALE * w}). "
            f"Warp the RGB frames onto the canonical grid (spikereveal calibrate) first"
        )
    return h, w


def load_exposures(
    recordings: Sequence[str | os.PathLike],
    k: int = DEFAULT_LDN_TIMESTAMPS,
    margin_frames: int = DEFAULT_MARGIN_FRAMES,
    progress: LoadProgress | None = None,
) -> list[ExposureData]:
    """Every exposure of ``recordings`` whose spike window (exposure ± margin) lies inside the spike data.

    Exposures too close to either end of ``spikes.dat`` are skipped (logged). Raises ConfigError when no
    exposure is left.
    """
    from spikereveal.recording import open_recording

    if not recordings:
        raise ConfigError("no recording given: pass at least one recording directory (--data REC)")
    with ExitStack() as stack:
        opened = []
        for path in recordings:
            recording = stack.enter_context(open_recording(path, strict=False, margin_frames=margin_frames))
            h, w = check_geometry(recording, path)
            opened.append((os.fspath(path), recording, h, w))
        total = sum(len(recording.exposures) for _, recording, _, _ in opened)
        exposures: list[ExposureData] = []
        done = 0
        for path, recording, h, w in opened:
            frame_count = recording.spikes.frame_count
            for exposure in recording.exposures:
                done += 1
                window = recording.exposure_window(exposure.index, k=k, margin_frames=margin_frames)
                if not window.inside(frame_count):
                    log.info(
                        "%s: exposure %d skipped: its spike window [%d, %d) is not inside the %d recorded frames",
                        path, exposure.index, window.window_first, window.window_stop, frame_count,
                    )
                    continue
                exposures.append(
                    ExposureData(
                        recording=path,
                        exposure_index=exposure.index,
                        blurry=np.ascontiguousarray(recording.read_exposure(exposure.index), dtype=np.float32),
                        packed=recording.spikes.read(int(window.window_first), int(window.window_stop)),
                        window=window,
                        spike_height=h,
                        spike_width=w,
                    )
                )
                if progress is not None:
                    progress(done, total, "loading exposures")
    if not exposures:
        raise ConfigError(
            f"none of the {total} exposure(s) in {[p for p, *_ in opened]} has its spike window "
            f"(exposure ± {margin_frames} frames) inside the recorded spikes; record longer margins"
        )
    return exposures


def _check_crop(crop: int, exposures: Sequence[ExposureData]) -> int:
    if isinstance(crop, bool) or not isinstance(crop, (int, np.integer)) or crop < 1:
        raise ConfigError(f"the crop size (spike pixels) must be a positive integer, got {crop!r}")
    smallest = min(min(e.spike_height, e.spike_width) for e in exposures)
    if crop > smallest:
        raise ConfigError(
            f"the crop of {crop} spike pixels does not fit in spike frames of {smallest} pixels on their short "
            f"side; use --crop {smallest} or less"
        )
    return int(crop)


class _CropDataset(Dataset):
    """Common part: ``samples_per_epoch`` seeded items per epoch over a list of exposures."""

    def __init__(self, exposures: Sequence[ExposureData], crop: int, samples_per_epoch: int, seed: int, augment: bool):
        if not exposures:
            raise ConfigError("a training dataset needs at least one exposure")
        if samples_per_epoch < 1:
            raise ConfigError(f"samples per epoch must be >= 1, got {samples_per_epoch}")
        self.exposures = list(exposures)
        self.crop = _check_crop(crop, self.exposures)
        self.samples_per_epoch = int(samples_per_epoch)
        self.seed = int(seed)
        self.augment = bool(augment)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def _rng(self, index: int) -> np.random.Generator:
        if not 0 <= index < self.samples_per_epoch:
            raise IndexError(index)
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def _pick(self, rng: np.random.Generator) -> tuple[int, ExposureData, int, int]:
        """An exposure (its list index and itself) and the top-left corner of a spike-grid crop in it."""
        i = int(rng.integers(len(self.exposures)))
        exposure = self.exposures[i]
        y = int(rng.integers(exposure.spike_height - self.crop + 1))
        x = int(rng.integers(exposure.spike_width - self.crop + 1))
        return i, exposure, y, x

    def _flips(self, rng: np.random.Generator) -> tuple[bool, bool]:
        """Random horizontal/vertical flips (the same for every array of one sample)."""
        if not self.augment:
            return False, False
        flip_x, flip_y = rng.integers(2, size=2)
        return bool(flip_x), bool(flip_y)


def _flip(array: np.ndarray, flip_x: bool, flip_y: bool) -> np.ndarray:
    if flip_x:
        array = array[..., ::-1]
    if flip_y:
        array = array[..., ::-1, :]
    return np.ascontiguousarray(array)


class BSNDataset(_CropDataset):
    """Items: ``TFP_short`` crops ``(1, crop, crop)`` at random timestamps inside random exposures."""

    def __init__(
        self,
        exposures: Sequence[ExposureData],
        crop: int = 64,
        samples_per_epoch: int = 256,
        seed: int = 0,
        tfp_window: int = DEFAULT_TFP_SHORT_WINDOW,
        augment: bool = True,
    ):
        super().__init__(exposures, crop, samples_per_epoch, seed, augment)
        self.tfp_window = check_tfp_window(tfp_window)

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = self._rng(index)
        _, exposure, y, x = self._pick(rng)
        center = int(rng.integers(exposure.window.exposure_first, exposure.window.exposure_stop))
        flips = self._flips(rng)
        image = exposure.tfp_short(center, self.tfp_window)[y : y + self.crop, x : x + self.crop]
        return torch.from_numpy(_flip(image, *flips)[None])


class SRDataset(_CropDataset):
    """Items: ``(TFP_long crop (1, c, c), gray(B) crop (1, 4c, 4c))``, aligned."""

    def __init__(
        self,
        exposures: Sequence[ExposureData],
        crop: int = 48,
        samples_per_epoch: int = 256,
        seed: int = 0,
        augment: bool = True,
    ):
        super().__init__(exposures, crop, samples_per_epoch, seed, augment)
        self._tfp_long = [e.tfp_long() for e in self.exposures]
        self._gray = [gray_image(e.blurry) for e in self.exposures]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = self._rng(index)
        i, _, y, x = self._pick(rng)
        flips = self._flips(rng)
        c, s = self.crop, SPIKE_TO_IMAGE_SCALE
        spikes = self._tfp_long[i][y : y + c, x : x + c]
        target = self._gray[i][s * y : s * (y + c), s * x : s * (x + c)]
        return torch.from_numpy(_flip(spikes, *flips)[None]), torch.from_numpy(_flip(target, *flips)[None])


def sdm_teacher(tfp_window: int = DEFAULT_TFP_SHORT_WINDOW) -> TeacherFn:
    """The plain SDM (no networks) as the student's teacher: ``B ⊙ TFP_short / TFP_long``, nearest ×4."""
    from spikereveal.kernels import sdm

    def teacher(exposure: ExposureData, centers: np.ndarray) -> np.ndarray:
        return sdm(exposure.blurry, exposure.tfp_shorts(centers, tfp_window), exposure.tfp_long())

    return teacher


#: How far (spike frames) a ground-truth frame may lie from a target's spike index for the "gt" teacher.
GT_TOLERANCE_FRAMES = 1


def ground_truth_teacher(tolerance_frames: int = GT_TOLERANCE_FRAMES) -> TeacherFn:
    """The recording's own sharp frames (``gt.csv``, simulated recordings) as the student's targets.

    Each target spike index takes the ground-truth frame nearest to it, which must lie within
    ``tolerance_frames``; a recording without ground truth there is a ConfigError that says how many frames per
    exposure to simulate (``--k``).
    """
    from spikereveal.kernels.timing import time_to_index
    from spikereveal.recording import open_recording

    def teacher(exposure: ExposureData, centers: np.ndarray) -> np.ndarray:
        centers = np.asarray(centers, dtype=np.int64)
        with open_recording(exposure.recording, strict=False) as recording:
            frames = recording.ground_truth_for(exposure.exposure_index) if recording.has_ground_truth else ()
            hint = (f"the ground-truth teacher needs sharp frames (gt.csv) at the {len(centers)} training timestamps "
                    f"of every exposure: simulate with --k {len(centers)} (or a --k that puts a frame at each of "
                    f"them), or use another --teacher")
            if not frames:
                raise ConfigError(f"{exposure.recording}: exposure {exposure.exposure_index} has no ground-truth "
                                  f"frames; {hint}")
            spike = recording.meta.spike
            indices = np.asarray(time_to_index(np.array([f.t_ns for f in frames], dtype=np.int64),
                                              spike.t0_ns, spike.rate_hz), dtype=np.int64)
            nearest = np.abs(indices[None, :] - centers[:, None]).argmin(axis=1)
            off = np.abs(indices[nearest] - centers)
            if off.max() > tolerance_frames:
                raise ConfigError(f"{exposure.recording}: exposure {exposure.exposure_index} has no ground-truth frame "
                                  f"within {tolerance_frames} spike frame(s) of index {int(centers[off.argmax()])}; "
                                  f"{hint}")
            return np.stack([recording.read_ground_truth(frames[j]) for j in nearest])

    return teacher


def ground_truth_where_recorded(teacher: TeacherFn, tolerance_frames: int = GT_TOLERANCE_FRAMES) -> TeacherFn:
    """Each recording with ground truth (``gt.csv``) trained on its sharp frames (:func:`ground_truth_teacher`), every
    other one on ``teacher``: simulated recordings beside a rig's own (``adapt``'s sensor-matched data)."""
    from spikereveal.recording import open_recording

    sharp = ground_truth_teacher(tolerance_frames)
    recorded: dict[str, bool] = {}

    def mixed(exposure: ExposureData, centers: np.ndarray) -> np.ndarray:
        if exposure.recording not in recorded:
            with open_recording(exposure.recording, strict=False) as recording:
                recorded[exposure.recording] = bool(recording.has_ground_truth)
        return (sharp if recorded[exposure.recording] else teacher)(exposure, centers)

    return mixed


def cpu_channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` (changed in place and returned) with its 4-D weights in channels-last layout when it is on a CPU,
    unchanged elsewhere. oneDNN's CPU convolutions run faster on it (measured on 2 cores, whole processes: the
    teacher's frames of an exposure x0.77 the time, student training steps x0.81-0.84; training/README.md, "Speed on a
    CPU"); inputs may stay contiguous, outputs agree to float rounding (~5e-7)."""
    parameter = next(module.parameters(), None)
    if parameter is not None and parameter.device.type == "cpu":
        module.to(memory_format=torch.channels_last)
    return module


def network_teacher(bsn, sr, tfp_window: int = DEFAULT_TFP_SHORT_WINDOW, chunk_size: int | None = 2,
                    precision: Callable[[], ContextManager] = contextlib.nullcontext) -> TeacherFn:
    """The cascade teacher ``clip(B ⊙ SR(BSN(TFP_short)) / SR(TFP_long), 0, 1)`` from trained nets.

    The nets run on the device they are on (on a CPU, in channels-last layout: :func:`cpu_channels_last`, applied
    here), in eval mode (set by the caller), ``chunk_size`` timestamps at a time (bounds memory on full frames),
    inside the context ``precision()`` (e.g. a bf16 autocast).
    """
    from spikereveal.training.teacher import teacher_frames

    cpu_channels_last(bsn)
    cpu_channels_last(sr)

    def teacher(exposure: ExposureData, centers: np.ndarray) -> np.ndarray:
        shorts = exposure.tfp_shorts(centers, tfp_window)
        with precision():
            frames = teacher_frames(exposure.blurry, shorts, exposure.tfp_long(), bsn, sr, chunk_size=chunk_size)
        return frames.detach().float().cpu().numpy()

    return teacher


def student_teacher(onnx_path: str | os.PathLike, threads: int | None = None) -> TeacherFn:
    """A trained student as the teacher: its deployed graph (an fp32 ONNX export with dynamic shapes, run by
    ONNX Runtime: ~3x faster than PyTorch eager on a CPU) on the full frame, one exposure at a time (its own
    firing gain), 8-bit output; targets ``clip(LDN(B, spikes(t_m)), 0, 1)`` as the deployed student gives them.
    Used to distil a smaller student (the lite variant) from the shipped one."""
    from spikereveal.engines.runners import InputShape, RunnerOptions, create_runner
    from spikereveal.kernels.extract import SPIKE_LEVEL

    runners: dict = {}

    def teacher(exposure: ExposureData, centers: np.ndarray) -> np.ndarray:
        height, width = exposure.blurry.shape[1:]
        shape = InputShape(len(centers), height, width)
        if shape not in runners:
            runners[shape] = create_runner("ort", shape, onnx_path=onnx_path,
                                           options=RunnerOptions(threads=threads, warmup_runs=0)).load()
        # the blurry frame came from an 8-bit PNG: back to its exact uint8 values, (1, H, W, 3) BGR
        image = np.rint(np.clip(exposure.blurry, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(1, 2, 0)[None]
        spikes = exposure.ldn_inputs(centers).astype(np.uint8) * np.uint8(SPIKE_LEVEL)
        sharp = runners[shape].infer(np.ascontiguousarray(image), np.ascontiguousarray(spikes))  # (K, H, W, 3)
        return sharp.transpose(0, 3, 1, 2).astype(np.float32) / 255.0

    return teacher


SHARED_CACHE_HINT = ("every process writes its share of the teacher targets there and reads the others', so "
                     "it must be a folder that every process sees (a shared filesystem across machines); pass "
                     "such a folder with --cache-dir")


def mean_teacher(*teachers: TeacherFn) -> TeacherFn:
    """The frame-by-frame mean of several teachers' targets, each clipped to [0, 1] first."""
    if not teachers:
        raise ConfigError("mean_teacher needs at least one teacher")

    def teacher(exposure: ExposureData, centers: np.ndarray) -> np.ndarray:
        frames = [np.clip(np.asarray(t(exposure, centers), dtype=np.float32), 0.0, 1.0) for t in teachers]
        return np.mean(frames, axis=0).astype(np.float32)

    return teacher


def cached_teacher(teacher: TeacherFn, cache_dir: str | os.PathLike, teacher_key: str) -> "TeacherCache":
    """``teacher`` with its targets kept on disk (float16 ``.npy``, one file per exposure and timestamps).

    ``teacher_key`` names the teacher (e.g. ``sdm-w9`` or the checkpoints' hashes); the file name also
    hashes the recording's path, its ``spikes.dat`` size and time, the exposure index and the spike
    indices, so a changed recording or teacher never reuses stale targets.
    """
    return TeacherCache(teacher, cache_dir, teacher_key)


class TeacherCache:
    """A teacher whose targets live in ``cache_dir`` (see :func:`cached_teacher`).

    Calling it reads an exposure's file, or computes and writes it. For several processes sharing one
    folder (``training.distributed``): :meth:`fill` computes only the files of one shard (each file belongs
    to exactly one shard, so no two processes write the same file; a file appears complete or not at all,
    written under a process-unique temporary name and renamed), and :meth:`reader` then reads the union and
    never computes.
    """

    def __init__(self, teacher: TeacherFn, cache_dir: str | os.PathLike, teacher_key: str):
        self.teacher = teacher
        self.folder = Path(cache_dir)
        self.teacher_key = str(teacher_key)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, exposure: ExposureData, centers: np.ndarray) -> Path:
        spikes = Path(exposure.recording) / "spikes.dat"
        stat = spikes.stat() if spikes.exists() else None
        identity = [self.teacher_key, str(Path(exposure.recording).resolve()), exposure.exposure_index,
                    [int(c) for c in centers], None if stat is None else (stat.st_size, stat.st_mtime_ns)]
        return self.folder / f"teacher-{hashlib.sha256(repr(identity).encode()).hexdigest()[:32]}.npy"

    def _compute(self, exposure: ExposureData, centers: np.ndarray, path) -> np.ndarray:
        targets = np.clip(np.asarray(self.teacher(exposure, centers), dtype=np.float32), 0.0, 1.0)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial.npy")
        np.save(partial, targets.astype(np.float16))
        os.replace(partial, path)
        return targets

    def __call__(self, exposure: ExposureData, centers: np.ndarray) -> np.ndarray:
        path = self.path(exposure, centers)
        if path.is_file():
            return np.load(path).astype(np.float32)
        return self._compute(exposure, centers, path)

    def fill(self, work: Sequence[tuple[ExposureData, np.ndarray]], rank: int = 0, world_size: int = 1,
             progress: LoadProgress | None = None) -> int:
        """Write the missing files of this ``rank``'s shard of ``work`` ((exposure, centers) pairs); returns
        how many it computed. Files are sharded, not exposures: an exposure listed twice is one file."""
        from spikereveal.training.distributed import shard

        unique: dict = {}
        for exposure, centers in work:
            unique.setdefault(self.path(exposure, centers), (exposure, centers))
        files = list(unique.items())
        mine = [files[i] for i in shard(len(files), rank, world_size)]
        computed = 0
        for done, (path, (exposure, centers)) in enumerate(mine, start=1):
            if not path.is_file():
                self._compute(exposure, centers, path)
                computed += 1
            if progress is not None:
                progress(done, len(mine), "teacher targets")
        return computed

    def missing(self, work: Sequence[tuple[ExposureData, np.ndarray]]) -> list[Path]:
        """The files of ``work`` that are not (yet) in the cache."""
        return [path for path in (self.path(exposure, centers) for exposure, centers in work) if not path.is_file()]

    def reader(self) -> TeacherFn:
        """The cached targets, read only: a missing file is a ConfigError (it is never computed here)."""

        def read(exposure: ExposureData, centers: np.ndarray) -> np.ndarray:
            path = self.path(exposure, centers)
            if not path.is_file():
                raise ConfigError(
                    f"teacher targets of {exposure.recording} exposure {exposure.exposure_index} are missing from "
                    f"{self.folder}: {SHARED_CACHE_HINT}"
                )
            return np.load(path).astype(np.float32)

        return read


def teacher_centers(window: ExposureWindow, timestamps: int, reblur_timestamps: int | None = None) -> np.ndarray:
    """The spike indices of the teacher's targets in one exposure: the ``timestamps`` (M) distilled ones
    among the ``reblur_timestamps`` (N, default M) evenly spread over it."""
    reblur = int(timestamps) if reblur_timestamps is None else int(reblur_timestamps)
    return evenly_spread_centers(window, reblur)[distilled_positions(reblur, int(timestamps))]


class LDNDataset(_CropDataset):
    """Items: ``(blurry (3, 4c, 4c), spikes (N, 21, c, c) uint8, teacher (M, 3, 4c, 4c), gain ())``, aligned;
    ``gain`` is the firing gain of the crop's whole exposure (:func:`exposure_gain`), what a deployed student
    with ``spike_norm`` "firing-gain" measures on the full frame.

    The N = ``reblur_timestamps`` (default M) timestamps are spread evenly over each exposure (first, last
    and N−2 between); the teacher's targets are at the M = ``timestamps`` of them that are themselves
    evenly spread (``distilled_positions``). Spike inputs and teacher targets are computed for every
    exposure up front (``teacher`` is called once per exposure).
    """

    def __init__(
        self,
        exposures: Sequence[ExposureData],
        teacher: TeacherFn,
        crop: int = 32,
        samples_per_epoch: int = 256,
        seed: int = 0,
        timestamps: int = DEFAULT_LDN_TIMESTAMPS,
        augment: bool = True,
        progress: LoadProgress | None = None,
        reblur_timestamps: int | None = None,
    ):
        super().__init__(exposures, crop, samples_per_epoch, seed, augment)
        self.timestamps = int(timestamps)
        self.reblur_timestamps = self.timestamps if reblur_timestamps is None else int(reblur_timestamps)
        self.distilled = distilled_positions(self.reblur_timestamps, self.timestamps)
        self._spikes: list[np.ndarray] = []
        self._teacher: list[np.ndarray] = []
        self._blurry: list[np.ndarray] = []
        self._gain = np.array([exposure_gain(exposure) for exposure in self.exposures], dtype=np.float32)
        for done, exposure in enumerate(self.exposures, start=1):
            centers = evenly_spread_centers(exposure.window, self.reblur_timestamps)
            self._spikes.append(exposure.ldn_inputs(centers).astype(np.uint8))
            targets = np.asarray(teacher(exposure, centers[self.distilled]), dtype=np.float32)  # = teacher_centers
            expected = (self.timestamps,) + exposure.blurry.shape
            if targets.shape != expected:
                raise ConfigError(f"the teacher returned targets of shape {targets.shape}, expected {expected}")
            self._teacher.append(np.clip(targets, 0.0, 1.0).astype(np.float16))
            self._blurry.append(exposure.blurry.astype(np.float16))
            if progress is not None:
                progress(done, len(self.exposures), "teacher targets")

    @property
    def gains(self) -> np.ndarray:
        """The firing gain of every exposure, (E,) float32."""
        return self._gain.copy()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = self._rng(index)
        i, _, y, x = self._pick(rng)
        flips = self._flips(rng)
        c, s = self.crop, SPIKE_TO_IMAGE_SCALE
        image_rows, image_cols = slice(s * y, s * (y + c)), slice(s * x, s * (x + c))
        blurry = self._blurry[i][:, image_rows, image_cols].astype(np.float32)
        spikes = self._spikes[i][:, :, y : y + c, x : x + c]
        targets = self._teacher[i][:, :, image_rows, image_cols].astype(np.float32)
        return (
            torch.from_numpy(_flip(blurry, *flips)),
            torch.from_numpy(_flip(spikes, *flips)),
            torch.from_numpy(_flip(targets, *flips)),
            torch.tensor(self._gain[i]),
        )
