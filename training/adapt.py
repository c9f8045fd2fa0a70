"""Fine-tune the shipped networks on a rig's own recordings (``spikereveal adapt``), without ground truth.

Stages, in order, each resumable and skipped once done (``DIR/adapt_state.json`` records them):

1. ``split``: every usable exposure (spike window inside the recorded spikes) of the recordings, in ``--data``
   order, is numbered; every ``holdout_every``-th one (the N-th, 2N-th, …; the last one when there are fewer
   than N) is **held out** and never trained on. ``train()`` takes recording directories, so the split is
   written as lightweight *recording views* under ``DIR/views/``: a ``meta.json`` copy, ``spikes.dat`` and
   the PNGs linked (symlink, else hard link, else copy) and an ``exposures.csv`` (and ``gt.csv``) listing
   only that side's exposures. The recordings themselves are never touched.
2. ``synth`` (``--synthetic matched``, the default): sensor-matched simulated recordings in ``DIR/synthetic``
   (:func:`spikereveal.sim.suites.sensor_matched`): the train split's scenes, motion and noise spread on the
   rig's spike geometry, clock and median exposure length, at a threshold of ``1 / (median firing gain of the
   training exposures)`` x 0.9-1.1 of the simulator's preset, with ground truth at the student's 13 re-blur
   timestamps; up to ``synthetic_exposures``, 8 per recording, as many as the stage's budget holds (at least one
   recording). The student trains on them beside the rig's own exposures, their ground truth as its targets
   (train's ``ground_truth="where-recorded"``; the rig's training views carry no ``gt.csv``).
3. ``bsn`` and 4. ``sr``: the teacher's nets. By default (``--teacher-nets keep``) the shipped ones (or
   ``--teacher-bsn`` / ``--teacher-sr``) are kept as they are and both stages are skipped: on the validation rig
   fine-tuning them cost the teacher 1.8 dB (training/README.md). ``--teacher-nets fine-tune`` (the paper's) trains
   each from its starting checkpoint with ``train(..., TrainConfig(kind, init=...))`` at the shipped learning
   rates. The teacher's short TFP window (the BSN's training data, the student's targets, the report's
   agreement) follows the median firing gain of the training exposures
   (:func:`~spikereveal.training.train_config.tfp_window_for_gain`), measured in the split stage and recorded in
   the state file and the report.
5. ``ldn``: the student, fine-tuned from the shipped model (or ``--model``) towards the mean of the teacher's
   frames and the starting student's own (``--distil-from teacher+student``, the default; ``teacher``: the
   teacher alone, the paper's S-SDM) with the shipped recipe's loss (``--lambda-ssim 2
   --lambda-reblur 1000 --reblur-timestamps 13 --reblur-rule trapezoid --reblur-gradient distilled``); its
   ``spike_norm`` is the init's. Teacher targets are cached in ``DIR/teacher_cache``.
6. ``export``: ``DIR/ldn.onnx`` with dynamic shapes (what ``spikereveal export --dynamic`` writes), for
   ``deblur --onnx`` and ``serve``.
7. ``report``: ground-truth-free indicators on the held-out exposures for the student before (the init)
   and after: re-blur PSNR (mean of its K frames vs the blurry frame, as ``eval`` computes it), agreement
   with the teacher it distilled from (PSNR of the student's frames against the teacher's, same timestamps), and
   the firing gain of the data against the range each model declares; plus PSNR/SSIM against ``gt.csv``
   (``evaluate``) where the held-out recordings have it. ``DIR/report.json`` and ``DIR/report.md``.

Time budget: ``time_budget_min`` covers the whole command. It is shared out in a fixed proportion
(:data:`STAGE_SHARES`): 10 % the simulated recordings, 15 % BSN, 10 % SR, 64 % the student *including* its teacher
targets, the last 1 % left to the export (~2 s measured); a stage that does not run gives its share to the student
(the defaults, teacher's nets kept and simulated recordings: 89 %; ``AdaptConfig.shares``), and what the earlier
stages left unspent of their budgets (the synthetic recordings stop short of theirs by up to one recording; the
teacher's nets train whole epochs) passes on to the student too (``carried_s``). The student's share also pays for the
split and the report: after its first epoch the report's cost is measured (:func:`report_estimate`: the teacher
timed on one held-out exposure, times the held-out exposures, the rest on one frame, times the held-out frames;
measured there because the report runs in a process that has trained, where the same work is faster than in a
fresh one) and taken, with the split's time, from the student's budget (recorded once per output directory).
Epochs are sized from a measurement: each stage first trains one epoch (whose learning rate, ``lr`` itself, is the
same under any cosine length), then plans ``1 + (stage budget − time spent) // first-epoch time`` epochs in all (at
most :data:`MAX_EPOCHS`, the shipped recipe's own epochs), and continues the same run (``resume=``) with that many,
so the per-epoch cosine schedule decays over exactly the epochs that fit. Every call to ``train`` also gets the
stage's remaining budget as ``time_limit_min``, a hard cap: a stage that reaches it stops with a checkpoint and
counts as done. A budget that does not hold one epoch trains at the full learning rate for what it holds; one that
does not hold a single step (preparation included) is a ConfigError saying which budget would. The time spent is
read from each checkpoint's ``elapsed_s``, so a re-run after an interruption spends only what is left of the budget.

Resuming: re-running with the same arguments continues (finished stages are skipped, an unfinished one resumes from
its checkpoint, which ``train`` writes after every epoch and at its time limit). Arguments that change what is
trained or held out (data, models, hold-out, precision, fixed epochs, the teacher's nets, the student's targets,
the simulated recordings)
must match the state file unless ``force`` starts over; budget, threads and device may change between runs.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from spikereveal.errors import ConfigError
from spikereveal.training.train_config import (
    AUTOCAST_CHOICES, DEFAULT_TFP_SHORT_WINDOW, KIND_DEFAULTS, MAX_TFP_SHORT_WINDOW, tfp_window_for_gain)

log = logging.getLogger(__name__)

STATE_FILE = "adapt_state.json"
STATE_FORMAT = "spikereveal-adapt-state"
REPORT_FORMAT = "spikereveal-adapt-report"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
VIEWS_DIR = "views"
CACHE_DIR = "teacher_cache"
SYNTHETIC_DIR = "synthetic"
ONNX_FILE = "ldn.onnx"
#: Files and folders adapt owns inside DIR (``force`` removes exactly these).
OWNED = (STATE_FILE, REPORT_JSON, REPORT_MD, VIEWS_DIR, CACHE_DIR, SYNTHETIC_DIR, ONNX_FILE,
         "bsn.pt", "bsn.pt.optim", "sr.pt", "sr.pt.optim", "ldn.pt", "ldn.pt.optim")

STAGES = ("split", "synth", "bsn", "sr", "ldn", "export", "report")
TRAINED = ("bsn", "sr", "ldn")
#: Share of the time budget per training stage (the student's also pays for the split and the report); the rest
#: (1 %) is the export's (a dynamic-shape ONNX export of the student: ~2 s on the development machine).
STAGE_SHARES = {"synth": 0.10, "bsn": 0.15, "sr": 0.10, "ldn": 0.64}
#: The stages before the student, whose unspent budget passes on to it.
EARLIER_STAGES = ("synth", "bsn", "sr")
#: Most epochs a stage plans, however much budget is left: the shipped recipe's (training/README.md).
MAX_EPOCHS = {"bsn": 10, "sr": 9, "ldn": 30}
MIN_TIME_BUDGET_MIN = 1.0
DEFAULT_TIME_BUDGET_MIN = 20.0
DEFAULT_HOLDOUT_EVERY = 4
#: The shipped student's loss settings (training/README.md, "How the shipped model was produced").
STUDENT_RECIPE: dict[str, Any] = {
    "lambda_ssim": 2.0, "lambda_reblur": 1000.0, "reblur_timestamps": 13, "reblur_rule": "trapezoid",
    "reblur_gradient": "distilled",
}
#: What the student stage distils from (``AdaptConfig.distil_from``): "teacher", the BSN+SR cascade (fine-tuned or
#: kept, ``teacher_nets``) alone (the paper's S-SDM); "teacher+student", the mean of the cascade's frames and the
#: starting student's (train's ``--teacher nets+ldn``). Chosen on the validation rig (training/README.md, "adapt").
DISTIL_SOURCES = ("teacher", "teacher+student")
DEFAULT_DISTIL_FROM = "teacher+student"
#: What happens to the teacher's nets (``AdaptConfig.teacher_nets``): "fine-tune" (the BSN and SR stages, the
#: paper's), or "keep" the starting ones as they are (both stages skipped; the student gets their budget).
TEACHER_NETS = ("fine-tune", "keep")
DEFAULT_TEACHER_NETS = "keep"
#: Simulated training data beside the rig's own (``AdaptConfig.synthetic``): "matched", recordings on a sensor like
#: the rig's (its threshold from the measured firing gain, ``sim.suites.sensor_matched``) whose ground truth is the
#: student's target on them; "off": the rig's recordings only.
SYNTHETIC = ("matched", "off")
DEFAULT_SYNTHETIC = "matched"
DEFAULT_SYNTHETIC_EXPOSURES = 48
#: Arguments that decide what is trained and held out: a re-run must repeat them (or start over with force).
IDENTITY = ("data", "model", "teacher_bsn", "teacher_sr", "holdout_every", "autocast", "stage_epochs", "distil_from",
            "teacher_nets", "synthetic", "synthetic_exposures")
#: what a state file written before an argument existed meant by it
IDENTITY_BEFORE = {"distil_from": "teacher", "teacher_nets": "fine-tune", "synthetic": "off",
                   "synthetic_exposures": DEFAULT_SYNTHETIC_EXPOSURES}


@dataclass(frozen=True)
class AdaptConfig:
    """What ``adapt`` does. ``data``: recording directories; ``out``: the output directory.

    ``model``/``teacher_bsn``/``teacher_sr``: checkpoints to start from (None: the shipped ones; the two
    teacher nets are given together or not at all). ``holdout_every`` (N >= 2): every N-th usable exposure
    is held out. ``autocast``: "bf16" runs the forward passes (and the teacher targets) in bfloat16.
    ``stage_epochs``: fixed epochs for (bsn, sr, ldn) instead of sizing them from the budget (tests,
    experts; the budget still caps each stage). ``distil_from``: the student stage's targets
    (:data:`DISTIL_SOURCES`); ``teacher_nets``: fine-tune the teacher's nets or keep them (:data:`TEACHER_NETS`).
    ``synthetic`` (:data:`SYNTHETIC`): train the student on sensor-matched simulated recordings too, up to
    ``synthetic_exposures`` exposures of them. ``force``: start over in an ``out`` that holds another run.
    """

    data: tuple[str, ...]
    out: str
    time_budget_min: float = DEFAULT_TIME_BUDGET_MIN
    model: str | None = None
    teacher_bsn: str | None = None
    teacher_sr: str | None = None
    holdout_every: int = DEFAULT_HOLDOUT_EVERY
    threads: int | None = None
    device: str = "cpu"
    autocast: str = "off"
    stage_epochs: tuple[int, int, int] | None = None
    distil_from: str = DEFAULT_DISTIL_FROM
    teacher_nets: str = DEFAULT_TEACHER_NETS
    synthetic: str = DEFAULT_SYNTHETIC
    synthetic_exposures: int = DEFAULT_SYNTHETIC_EXPOSURES
    force: bool = False

    def __post_init__(self):
        object.__setattr__(self, "data", tuple(os.fspath(p) for p in self.data))
        object.__setattr__(self, "out", os.fspath(self.out))
        for name in ("model", "teacher_bsn", "teacher_sr"):
            value = getattr(self, name)
            object.__setattr__(self, name, None if value is None else os.fspath(value))
        if not self.data:
            raise ConfigError("no recording given: pass at least one recording directory (--data REC)")
        resolved = [Path(p).resolve() for p in self.data]
        twice = sorted({os.fspath(p) for p in self.data if resolved.count(Path(p).resolve()) > 1})
        if twice:
            raise ConfigError(f"--data lists {', '.join(twice)} more than once; give each recording once")
        budget = self.time_budget_min
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget):
            raise ConfigError(f"--time-budget-min must be a number of minutes, got {budget!r}")
        if budget < MIN_TIME_BUDGET_MIN:
            raise ConfigError(
                f"--time-budget-min {budget:g} is too small to train anything: the three networks and the "
                f"teacher's targets need at least {MIN_TIME_BUDGET_MIN:g} minute (give --time-budget-min 1 or more; "
                f"the default {DEFAULT_TIME_BUDGET_MIN:g} is meant for a few dozen exposures)"
            )
        every = self.holdout_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 2:
            raise ConfigError(
                f"--holdout-every must be a whole number >= 2 (every N-th exposure is held out to measure the "
                f"result; 1 would hold out all of them), got {every!r}"
            )
        if (self.teacher_bsn is None) != (self.teacher_sr is None):
            raise ConfigError("give both --teacher-bsn and --teacher-sr (or neither: the shipped teacher nets)")
        if self.autocast not in AUTOCAST_CHOICES:
            raise ConfigError(f"unknown autocast {self.autocast!r}; use one of {list(AUTOCAST_CHOICES)}")
        if self.distil_from not in DISTIL_SOURCES:
            raise ConfigError(f"unknown --distil-from {self.distil_from!r}; use one of {list(DISTIL_SOURCES)}")
        if self.teacher_nets not in TEACHER_NETS:
            raise ConfigError(f"unknown --teacher-nets {self.teacher_nets!r}; use one of {list(TEACHER_NETS)}")
        if self.synthetic not in SYNTHETIC:
            raise ConfigError(f"unknown --synthetic {self.synthetic!r}; use one of {list(SYNTHETIC)}")
        count = self.synthetic_exposures
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"--synthetic-exposures must be a whole number >= 1 (or --synthetic off), got {count!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or self.threads < 1):
            raise ConfigError(f"--threads must be >= 1, got {self.threads!r}")
        if self.stage_epochs is not None:
            epochs = tuple(self.stage_epochs)
            if len(epochs) != 3 or any(isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in epochs):
                raise ConfigError(f"stage_epochs must be three positive integers (bsn, sr, ldn), got {epochs!r}")
            object.__setattr__(self, "stage_epochs", epochs)

    @property
    def time_budget_s(self) -> float:
        return 60.0 * float(self.time_budget_min)

    @property
    def trains_teacher(self) -> bool:
        return self.teacher_nets == "fine-tune"

    @property
    def simulates(self) -> bool:
        return self.synthetic != "off"

    def shares(self) -> dict[str, float]:
        """:data:`STAGE_SHARES`, where a stage that does not run (the teacher's nets kept, no synthetic data) gives
        its share to the student."""
        shares = dict(STAGE_SHARES)
        skipped = ([] if self.trains_teacher else ["bsn", "sr"]) + ([] if self.simulates else ["synth"])
        for stage in skipped:
            shares["ldn"] += shares[stage]
            shares[stage] = 0.0
        return shares

    def stage_budget_s(self, stage: str) -> float:
        return self.time_budget_s * self.shares()[stage]

    def teacher_paths(self, starts: Mapping[str, Path]) -> dict[str, Path]:
        """The teacher nets the student distils from: the fine-tuned ones in ``out``, or the starting ones."""
        if self.trains_teacher:
            return {kind: Path(self.out) / f"{kind}.pt" for kind in ("bsn", "sr")}
        return {kind: Path(starts[kind]) for kind in ("bsn", "sr")}


@dataclass(frozen=True)
class AdaptProgress:
    """One progress report. ``status``: "start", "skip", "progress" (a step within a stage, e.g. a simulated
    recording written), "done" or "train" (``train`` holds the training
    loop's own ``TrainProgress``); ``index`` is the stage's 1-based position among ``stages``."""

    stage: str
    index: int
    stages: int
    status: str
    message: str = ""
    train: Any = None  # spikereveal.training.train.TrainProgress for status "train"


AdaptProgressFn = Callable[[AdaptProgress], None]


@dataclass(frozen=True)
class AdaptResult:
    out: Path
    report: dict
    ran: tuple[str, ...]  # stages that did work in this call
    skipped: tuple[str, ...]  # stages found done by an earlier call
    outputs: Mapping[str, Path] = field(default_factory=dict)


# -- shipped checkpoints -------------------------------------------------------------------------------------
def _starting_points(config: AdaptConfig) -> dict[str, Path]:
    """The checkpoints each stage starts from; ConfigError naming the option when one is missing."""
    from spikereveal.engines.export import SHIPPED_TEACHER_RESOURCES, resolve_model_path, shipped_teacher_path

    points = {"ldn": resolve_model_path(config.model)}
    for kind, given in (("bsn", config.teacher_bsn), ("sr", config.teacher_sr)):
        if given is not None:
            if not Path(given).is_file():
                raise ConfigError(f"--teacher-{kind} {given} does not exist; pass a {kind} checkpoint")
            points[kind] = Path(given)
            continue
        shipped = shipped_teacher_path(kind)
        if shipped is None:
            raise ConfigError(
                f"no shipped teacher {kind} is installed (spikereveal/{SHIPPED_TEACHER_RESOURCES[kind]}); pass "
                f"--teacher-bsn CKPT --teacher-sr CKPT"
            )
        points[kind] = shipped
    return points


# -- the hold-out split and the recording views ----------------------------------------------------------------
@dataclass(frozen=True)
class Split:
    """Usable exposures per recording (``data`` order) and which are held out; unusable ones listed."""

    recordings: tuple[str, ...]
    train: tuple[tuple[int, ...], ...]  # per recording: exposure indices trained on
    held_out: tuple[tuple[int, ...], ...]  # per recording: exposure indices held out
    unusable: tuple[tuple[int, ...], ...]  # per recording: exposures whose spike window is incomplete
    smallest_side: int  # the smallest spike-grid side among the recordings (bounds the crops)

    def to_dict(self, holdout_every: int) -> dict:
        def side(groups):
            return [{"recording": r, "exposures": list(g)} for r, g in zip(self.recordings, groups) if g]

        return {
            "holdout_every": holdout_every,
            "rule": f"usable exposures numbered in --data order; every {_ordinal(holdout_every)} is held out "
                    f"(the last one when there are fewer)",
            "train_exposures": sum(len(g) for g in self.train),
            "held_out_exposures": sum(len(g) for g in self.held_out),
            "train": side(self.train),
            "held_out": side(self.held_out),
            "unusable": side(self.unusable),
        }


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def split_recordings(data: Sequence[str], holdout_every: int, margin_frames: int | None = None) -> Split:
    """Open every recording, find its usable exposures (the spike window, exposure ± ``margin_frames``,
    inside the recorded spikes) and hold out every ``holdout_every``-th one. ConfigError when a recording
    has no usable exposure or fewer than two are usable in all (nothing would be left to train or to test)."""
    from spikereveal.kernels.timing import DEFAULT_MARGIN_FRAMES
    from spikereveal.recording import open_recording
    from spikereveal.training.datasets import check_geometry

    margin = max(DEFAULT_MARGIN_FRAMES, DEFAULT_TFP_SHORT_WINDOW // 2) if margin_frames is None else margin_frames
    usable: list[list[int]] = []
    unusable: list[list[int]] = []
    sides = []
    for path in data:
        with open_recording(path, strict=False, margin_frames=margin) as recording:
            h, w = check_geometry(recording, path)
            sides.append(min(h, w))
            good = [e.index for e in recording.exposures if recording.window_complete(e.index, margin_frames=margin)]
            bad = [e.index for e in recording.exposures if e.index not in set(good)]
            if not good:
                raise ConfigError(
                    f"{path}: none of its {len(recording.exposures)} exposure(s) is usable: each needs its spike "
                    f"window (the exposure ± {margin} spike frames) inside the recorded spikes. Record longer "
                    f"margins around the exposures, or leave this recording out of --data"
                )
            usable.append(good)
            unusable.append(bad)
    flat = [(r, index) for r, group in enumerate(usable) for index in group]
    if len(flat) < 2:
        raise ConfigError(
            f"only {len(flat)} usable exposure in {list(data)}: adapt holds out every --holdout-every-th "
            f"exposure to measure the result and trains on the rest, so it needs at least 2; record more "
            f"exposures (a few dozen is typical)"
        )
    positions = [p for p in range(len(flat)) if (p + 1) % holdout_every == 0] or [len(flat) - 1]
    held = {flat[p] for p in positions}
    train = tuple(tuple(i for i in group if (r, i) not in held) for r, group in enumerate(usable))
    held_out = tuple(tuple(i for i in group if (r, i) in held) for r, group in enumerate(usable))
    return Split(tuple(os.fspath(p) for p in data), train, held_out, tuple(tuple(g) for g in unusable), min(sides))


def _link(source: Path, target: Path) -> None:
    """``target`` as a symlink to ``source``, else a hard link, else a copy (keeping the file times)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    try:
        os.symlink(source.resolve(), target)
        return
    except (OSError, NotImplementedError):
        pass
    try:
        os.link(source, target)
    except OSError:
        log.info("%s: cannot link it here, copying it to %s", source, target)
        shutil.copy2(source, target)


def _filter_csv(source: Path, target: Path, column: str, keep: set[int]) -> list[str]:
    """Copy the CSV ``source`` to ``target`` with only the rows whose ``column`` is in ``keep``; returns the
    ``image`` cells of those rows."""
    with open(source, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    header = [cell.strip() for cell in rows[0]]
    at, image_at = header.index(column), header.index("image")
    kept = [row for row in rows[1:] if int(row[at].strip()) in keep]
    with open(target, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows([rows[0], *kept])
    return [row[image_at].strip() for row in kept]


def write_view(source: str | os.PathLike, target: str | os.PathLike, exposures: Sequence[int],
               ground_truth: bool) -> Path:
    """A recording directory at ``target`` that holds only ``exposures`` of ``source`` (and their ground
    truth when ``ground_truth`` and the source has it); spikes and images are linked, not copied."""
    from spikereveal.recording import EXPOSURES_FILE, GT_FILE, META_FILE, SPIKES_FILE

    source, target = Path(source), Path(target)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    keep = {int(i) for i in exposures}
    images = _filter_csv(source / EXPOSURES_FILE, target / EXPOSURES_FILE, "index", keep)
    if ground_truth and (source / GT_FILE).is_file():
        images += _filter_csv(source / GT_FILE, target / GT_FILE, "exposure_index", keep)
    for image in images:
        _link(source / image, target / image)
    _link(source / SPIKES_FILE, target / SPIKES_FILE)
    shutil.copyfile(source / META_FILE, target / META_FILE)  # last: a view without it does not open
    return target


def _view_name(position: int, path: str) -> str:
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(path).resolve().name) or "recording"
    return f"{position:02d}_{name}"


def write_views(split: Split, views_dir: Path) -> tuple[list[Path], list[Path], dict[str, str]]:
    """Train and held-out views of every recording; returns (train views, held-out views, view -> source)."""
    train_views, held_views, sources = [], [], {}
    for position, path in enumerate(split.recordings):
        name = _view_name(position, path)
        for groups, side, views, truth in ((split.train, "train", train_views, False),
                                          (split.held_out, "held_out", held_views, True)):
            if groups[position]:
                view = write_view(path, views_dir / side / name, groups[position], ground_truth=truth)
                views.append(view)
                sources[os.fspath(view)] = path
    return train_views, held_views, sources


# -- state ---------------------------------------------------------------------------------------------------------
def _identity(config: AdaptConfig) -> dict[str, Any]:
    def resolved(path):
        return None if path is None else os.fspath(Path(path).resolve())

    return {
        "data": [resolved(p) for p in config.data],
        "model": resolved(config.model),
        "teacher_bsn": resolved(config.teacher_bsn),
        "teacher_sr": resolved(config.teacher_sr),
        "holdout_every": config.holdout_every,
        "autocast": config.autocast,
        "stage_epochs": None if config.stage_epochs is None else list(config.stage_epochs),
        "distil_from": config.distil_from,
        "teacher_nets": config.teacher_nets,
        "synthetic": config.synthetic,
        "synthetic_exposures": config.synthetic_exposures,
    }


_OPTION = {"data": "--data", "model": "--model", "teacher_bsn": "--teacher-bsn", "teacher_sr": "--teacher-sr",
           "holdout_every": "--holdout-every", "autocast": "--autocast", "stage_epochs": "the fixed epochs",
           "distil_from": "--distil-from", "teacher_nets": "--teacher-nets", "synthetic": "--synthetic",
           "synthetic_exposures": "--synthetic-exposures"}


def _prepare_out(config: AdaptConfig) -> dict:
    """Check ``out`` and return the state to continue (a fresh one when there is none, or with force)."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; adapt writes a directory (checkpoints, ONNX, report): "
                          f"give a new or existing directory")
    state_path = out / STATE_FILE
    identity = _identity(config)
    fresh = {"format": STATE_FORMAT, "version": 1, "identity": identity, "stages": {}, "runs": []}
    if config.force and out.is_dir():
        for name in OWNED:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        return fresh
    if not state_path.is_file():
        if out.is_dir() and any(out.iterdir()):
            raise ConfigError(
                f"--out {out} is a directory that holds no adapt run ({STATE_FILE} is missing); choose a new or "
                f"empty directory, or pass --force to write into it anyway"
            )
        return fresh
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{state_path} cannot be read ({exc}); pass --force to start over in {out}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ConfigError(f"{state_path} is not an adapt state file; pass --force to start over in {out}")
    before = {**IDENTITY_BEFORE, **(state.get("identity") or {})}
    changed = [name for name in IDENTITY if before.get(name) != identity[name]]
    if changed:
        details = "; ".join(f"{_OPTION[n]} was {before.get(n)!r}, now {identity[n]!r}" for n in changed)
        raise ConfigError(
            f"{out} holds an adaptation with other arguments ({details}). Re-run with the same arguments to "
            f"continue it, use another --out, or pass --force to start over in {out}"
        )
    state.setdefault("stages", {})
    state.setdefault("runs", [])
    return state


def _save_state(out: Path, state: dict) -> None:
    path = out / STATE_FILE
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)


# -- sensor-matched simulated recordings --------------------------------------------------------------------------
def rig_sim_changes(views: Sequence[Path], k: int) -> dict[str, Any]:
    """The simulator fields that make a recording like the rig's: its spike geometry (RGB 4x), spike clock rate,
    median exposure length in spike frames, and ``k`` ground-truth frames per exposure."""
    from spikereveal.kernels.images import SPIKE_TO_IMAGE_SCALE
    from spikereveal.recording import open_recording

    frames, spike = [], None
    for view in views:
        with open_recording(view, strict=False) as recording:
            spike = spike or recording.meta.spike
            for exposure in recording.exposures:
                window = recording.exposure_window(exposure.index)
                frames.append(int(window.exposure_stop - window.exposure_first))
    if spike is None or not frames:
        raise ConfigError("no training exposure to measure the rig's geometry from; pass more recordings to --data")
    height, width = int(spike.height), int(spike.width)
    return {"spike_height": height, "spike_width": width, "rgb_height": SPIKE_TO_IMAGE_SCALE * height,
            "rgb_width": SPIKE_TO_IMAGE_SCALE * width, "rate_hz": float(spike.rate_hz),
            "exposure_frames": max(2, int(np.median(frames))), "k": int(k)}


def _sim_complete(path: str | os.PathLike) -> bool:
    from spikereveal.sim.suites import recording_complete

    return recording_complete(path)


def _synthesize(config: AdaptConfig, record: dict, out: Path, train_views: Sequence[Path], gain: float | None,
                emit: Callable[..., None], save_state: Callable[[], None]) -> list[Path]:
    """Write the sensor-matched recordings into ``out/synthetic`` (each one complete or not at all), as many as
    ``config.synthetic_exposures`` asks and the stage's budget holds (at least one); returns their paths."""
    from spikereveal.sim.suites import sensor_matched, write_entry

    root = out / SYNTHETIC_DIR
    if gain is None or not math.isfinite(gain) or gain <= 0:
        threshold_scale = 1.0
        log.warning("the rig's firing gain could not be measured (frames too dark): the simulated recordings use the "
                    "preset's threshold")
    else:
        threshold_scale = round(1.0 / float(gain), 4)
    changes = record.get("geometry") or rig_sim_changes(train_views, STUDENT_RECIPE["reblur_timestamps"])
    entries = sensor_matched(threshold_scale, config.synthetic_exposures)
    budget_s = config.stage_budget_s("synth")
    written = [p for p in record.get("recordings", []) if _sim_complete(p)]
    spent = float(record.get("elapsed_s", 0.0))
    per_exposure_s = record.get("seconds_per_exposure")
    record.update(status="running", threshold_scale=threshold_scale, firing_gain=gain, geometry=changes,
                  budget_s=round(budget_s, 1), stopped=None)
    save_state()
    for entry in entries:
        path = entry.path(root)
        if os.fspath(path) in written:
            continue
        if written and per_exposure_s is not None and spent + per_exposure_s * entry.exposures > budget_s:
            record["stopped"] = "time budget"
            break
        started = time.monotonic()
        write_entry(entry, root, suite_name="adapt-synthetic", changes=changes)
        seconds = time.monotonic() - started
        spent += seconds
        per_exposure_s = seconds / entry.exposures
        written.append(os.fspath(path))
        record.update(recordings=written, elapsed_s=round(spent, 2), seconds_per_exposure=round(per_exposure_s, 4),
                      exposures=sum(e.exposures for e in entries if os.fspath(e.path(root)) in written))
        save_state()
        emit("progress", f"{path.name}: {entry.exposures} exposure(s) at threshold x{entry.threshold_scale:g}")
    record["status"] = "done"
    save_state()
    return [Path(p) for p in written]


# -- training stages -------------------------------------------------------------------------------------------
def unspent_s(config: AdaptConfig, stages: Mapping[str, Mapping]) -> float:
    """What the finished stages before the student (:data:`EARLIER_STAGES`) left unspent of their budgets, in
    seconds (never negative per stage: a stage that overran does not take from the student)."""
    total = 0.0
    for kind in EARLIER_STAGES:
        record = stages.get(kind) or {}
        if record.get("status") == "done":
            total += max(0.0, config.stage_budget_s(kind) - float(record.get("elapsed_s", 0.0)))
    return total


def plan_epochs(stage_budget_s: float, spent_s: float, first_epoch_s: float, cap: int) -> int:
    """Epochs in all for a stage whose first epoch took ``first_epoch_s`` and which has spent ``spent_s`` of
    ``stage_budget_s`` (preparation included): the first plus as many more as the rest holds, 1 … ``cap``."""
    rest = stage_budget_s - spent_s
    more = cap if first_epoch_s <= 0 else int(max(rest, 0.0) // first_epoch_s)
    return int(max(1, min(cap, 1 + more)))


def _crop(kind: str, smallest_side: int) -> int:
    """The shipped crop of ``kind``, shrunk to the smallest sensor side when that is smaller."""
    return int(min(KIND_DEFAULTS[kind]["crop"], smallest_side))


def _fresh_config(kind: str, config: AdaptConfig, epochs: int, starts: Mapping[str, Path], out: Path,
                  smallest_side: int, tfp_window: int = DEFAULT_TFP_SHORT_WINDOW):
    from spikereveal.training.train_config import TrainConfig

    common = dict(epochs=epochs, init=os.fspath(starts[kind]), crop=_crop(kind, smallest_side), seed=0,
                  autocast=config.autocast, tfp_window=tfp_window)
    if kind != "ldn":
        return TrainConfig(kind, **common)
    student = dict(teacher="nets") if config.distil_from == "teacher" else dict(
        teacher="nets+ldn", teacher_ldn=os.fspath(starts["ldn"]))
    nets = config.teacher_paths(starts)
    truth = "where-recorded" if config.simulates else "ignore"  # the rig's training views never carry gt.csv
    return TrainConfig("ldn", teacher_bsn=os.fspath(nets["bsn"]), teacher_sr=os.fspath(nets["sr"]),
                       teacher_autocast=config.autocast, ground_truth=truth, **student, **STUDENT_RECIPE, **common)


def _checkpoint_record(path: Path) -> dict | None:
    """The training record of a stage checkpoint written by an earlier call, or None."""
    if not path.is_file():
        return None
    from spikereveal.engines.checkpoint import load_checkpoint

    _, meta = load_checkpoint(path)
    training = meta.get("training") or {}
    return training if "config" in training else None


class _Stage:
    """Runs one training stage: probe epoch, plan, continue; records everything in the state."""

    def __init__(self, kind, config: AdaptConfig, state: dict, out: Path, data, starts, smallest_side,
                 emit: Callable[..., None], save_state: Callable[[], None], tfp_window: int,
                 measure_report: Callable[[], dict] | None = None, other_s: float = 0.0, carried_s: float = 0.0):
        """``data``: every recording the stage trains on (the student's includes the simulated ones).
        ``measure_report``: the student stage's; what the report will take (:func:`report_estimate`), measured
        after the first epoch and kept back from this stage's budget with ``other_s`` (the split's time).
        ``carried_s``: what the earlier stages left unspent (:func:`unspent_s`), added to this stage's share."""
        self.kind, self.config, self.out, self.tfp_window = kind, config, out, tfp_window
        self.record = state["stages"].setdefault(kind, {"status": "pending"})
        self.data, self.starts, self.smallest_side = data, starts, smallest_side
        self.emit, self.save_state = emit, save_state
        self.checkpoint = out / f"{kind}.pt"
        self.measure_report, self.other_s = measure_report, other_s
        self.share_s = config.stage_budget_s(kind) + carried_s
        self.budget_s = self.share_s
        if carried_s > 0:
            self.record["carried_s"] = round(carried_s, 1)
        if "report_time" in self.record:  # a re-run (its budget may differ): the reserve measured then
            self._take_reserve()

    def _take_reserve(self) -> None:
        """This stage's budget less the recorded reserve for the split and the report (also in the state)."""
        self.budget_s = self.share_s - self.record["report_time"]["reserve_s"]
        self.record["budget_s"] = round(self.budget_s, 1)

    def _keep_back_the_report(self) -> None:
        """Measure the report once (warm: after this stage's first epoch, as the report runs after training) and
        take it, with the split's time, from this stage's budget; ConfigError when that leaves too little."""
        if self.measure_report is None or "report_time" in self.record:
            return
        timed = self.measure_report()
        timed["reserve_s"] = round(timed["estimate_s"] + self.other_s, 1)
        self.record["report_time"] = timed
        self._take_reserve()
        self.save_state()
        self.emit("progress", f"{timed['reserve_s']:.0f} s of the budget kept for the split and the report")
        if timed["reserve_s"] > RESERVE_MAX_FRACTION * self.config.time_budget_s:
            suggest = math.ceil(timed["reserve_s"] / RESERVE_MAX_FRACTION / 60.0)
            raise ConfigError(
                f"the report on the {timed['held_out_exposures']} held-out exposure(s) needs about "
                f"{timed['reserve_s']:.0f} s, more than {RESERVE_MAX_FRACTION:.0%} of --time-budget-min "
                f"{self.config.time_budget_min:g}; re-run with --time-budget-min {suggest} or more, or hold out fewer "
                f"exposures with a larger --holdout-every (the epoch done and the measurement are kept)"
            )

    def _call(self, epochs: int, resume: bool, limit_s: float):
        from spikereveal.training.train import RunOptions, TrainConfig, train

        options = RunOptions(device=self.config.device, threads=self.config.threads, time_limit_min=limit_s / 60.0,
                             cache_dir=os.fspath(self.out / CACHE_DIR) if self.kind == "ldn" else None)
        if resume:
            train_config = TrainConfig(self.kind, epochs=epochs)
        else:
            train_config = _fresh_config(self.kind, self.config, epochs, self.starts, self.out, self.smallest_side,
                                         self.tfp_window)
        self.record["status"] = "running"
        self.save_state()
        return train([os.fspath(v) for v in self.data], self.checkpoint, train_config,
                     resume=self.checkpoint if resume else None, options=options,
                     progress=lambda event: self.emit("train", train=event))

    def _finish(self, stopped: str | None, training: Mapping | None) -> None:
        record = self.record
        record.update(status="done", stopped=stopped)
        if training is not None:
            record.update(epochs_completed=int(training.get("epochs_completed", 0)),
                          elapsed_s=float(training.get("elapsed_s", 0.0)),
                          step_in_epoch=int(training.get("step_in_epoch", 0)))
        self.save_state()

    def _too_small(self, result) -> None:
        """ConfigError when not even one step fitted in the stage's budget (preparation included)."""
        if result.stopped_early is None or result.epochs_completed > 0 or result.step_in_epoch > 1:
            return
        needed_s = result.elapsed_s * 1.5
        share = self.config.shares()[self.kind]
        suggest = math.ceil(needed_s / share / 60.0)
        raise ConfigError(
            f"the {self.kind} stage needed {result.elapsed_s:.0f} s for its preparation and a single training step, "
            f"more than its share of --time-budget-min ({self.budget_s:.0f} s = {share:.0%} of "
            f"{self.config.time_budget_min:g} min); re-run the same command with --time-budget-min {suggest} or "
            f"more (the step done is kept)"
        )

    def run(self) -> bool:
        """Train the stage to its plan; returns False when it was already done."""
        if self.record.get("status") == "done":
            return False
        training = _checkpoint_record(self.checkpoint)
        spent = 0.0 if training is None else float(training.get("elapsed_s", 0.0))
        remaining = self.budget_s - spent
        if training is not None and remaining <= 0:
            self._finish("time budget", training)
            return True
        fixed = None if self.config.stage_epochs is None else self.config.stage_epochs[TRAINED.index(self.kind)]
        planned = self.record.get("planned_epochs") or fixed
        if planned is None:  # measure: one epoch (the schedule's first epoch is the same for any length)
            if training is None or int(training.get("epochs_completed", 0)) < 1:
                result = self._call(1, resume=training is not None, limit_s=remaining)
                training = _checkpoint_record(self.checkpoint)
                if not result.finished:
                    self._too_small(result)
                    self.record["note"] = "the budget did not hold one epoch"
                    self._finish(result.stopped_early, training)
                    return True
            self._keep_back_the_report()
            first_epoch_s = float(training["history"][0]["seconds"])
            spent = float(training.get("elapsed_s", 0.0))
            planned = plan_epochs(self.budget_s, spent, first_epoch_s, MAX_EPOCHS[self.kind])
            self.record.update(planned_epochs=planned, first_epoch_s=first_epoch_s)
            self.save_state()
            remaining = self.budget_s - spent
        else:
            self.record["planned_epochs"] = planned
            self._keep_back_the_report()  # fixed epochs: measured before them (the budget still caps them)
            remaining = self.budget_s - spent
        if training is None or int(training.get("epochs_completed", 0)) < planned:
            if remaining <= 0:
                self._finish("time budget", training)
                return True
            result = self._call(planned, resume=training is not None, limit_s=remaining)
            self._too_small(result)
            training = _checkpoint_record(self.checkpoint)
            self._finish(result.stopped_early, training)
        else:
            self._finish(None, training)
        return True


# -- indicators ------------------------------------------------------------------------------------------------
def _student_fn(path: Path, device: str):
    from spikereveal.engines.checkpoint import load_checkpoint
    from spikereveal.training.evaluate import torch_student

    model, meta = load_checkpoint(path, expected_kind="ldn")
    return torch_student(model, device), meta


def data_firing_gain(views: Sequence[Path]) -> float:
    """The median firing gain (``kernels.sensor``) of the usable exposures of ``views``; nan when none is
    measurable (frames too dark)."""
    from spikereveal.kernels.sensor import exposure_firing_gain
    from spikereveal.kernels.timing import DEFAULT_K
    from spikereveal.training import datasets as ds

    gains = [exposure_firing_gain(e.packed, e.spike_height, e.spike_width, e.window, e.blurry)
             for e in ds.load_exposures([os.fspath(v) for v in views], k=DEFAULT_K)]
    gains = [g for g in gains if np.isfinite(g)]
    return float(np.median(gains)) if gains else math.nan


def _indicators(held_views: Sequence[Path], sources: Mapping[str, str], before: Path, after: Path,
                nets: Mapping[str, Path], device: str, tfp_window: int = DEFAULT_TFP_SHORT_WINDOW) -> dict:
    """GT-free indicators of the student ``before`` and ``after`` on the held-out exposures; ``nets``: the
    teacher's BSN and SR checkpoints (those the student distilled from)."""
    from spikereveal.engines.checkpoint import declared_gain_range, load_checkpoint
    from spikereveal.kernels import reblur
    from spikereveal.kernels.sensor import exposure_firing_gain, firing_gain_summary
    from spikereveal.kernels.timing import DEFAULT_K
    from spikereveal.training import datasets as ds
    from spikereveal.training.evaluate import psnr, run_student
    from spikereveal.training.train import resolve_device

    target = resolve_device(device)
    bsn, _ = load_checkpoint(nets["bsn"], expected_kind="bsn", map_location=target)
    sr, _ = load_checkpoint(nets["sr"], expected_kind="sr", map_location=target)
    teacher = ds.network_teacher(bsn.eval(), sr.eval(), tfp_window)
    students = {"before": _student_fn(before, device), "after": _student_fn(after, device)}
    exposures = ds.load_exposures([os.fspath(v) for v in held_views], k=DEFAULT_K)
    entries = []
    for exposure in exposures:
        centers = exposure.window.centers
        teacher_frames = np.clip(teacher(exposure, centers), 0.0, 1.0)
        gain = exposure_firing_gain(exposure.packed, exposure.spike_height, exposure.spike_width, exposure.window,
                                    exposure.blurry)
        entry = {"recording": sources[exposure.recording], "exposure_index": int(exposure.exposure_index),
                 "firing_gain": float(gain) if np.isfinite(gain) else None}
        for name, (student, _) in students.items():
            frames = run_student(student, exposure, centers)
            entry[name] = {
                "reblur_psnr": psnr(exposure.blurry, reblur(frames)),
                "teacher_agreement_psnr": float(np.mean([psnr(t, s) for t, s in zip(teacher_frames, frames)])),
            }
        entries.append(entry)

    def mean(side, key):
        return float(np.mean([e[side][key] for e in entries]))

    gains = [np.nan if e["firing_gain"] is None else e["firing_gain"] for e in entries]
    ranges = {name: declared_gain_range(meta) for name, (_, meta) in students.items()}
    gain_block = {"definition": "mean spikes per pixel per spike frame over the exposure's frames / mean gray "
                                "of its blurry frame (spikereveal.kernels.sensor)"}
    for name, trained in ranges.items():
        summary = firing_gain_summary(gains, trained, "held-out exposures")
        gain_block.setdefault("held_out", {k: summary[k] for k in ("exposures", "unmeasured_exposures", "min",
                                                                    "mean", "max")})
        gain_block[name] = {"trained_range": summary["trained_range"], "out_of_domain": summary["out_of_domain"],
                            "exposures_out_of_domain": summary["exposures_out_of_domain"]}
    return {
        "k": DEFAULT_K,
        "definitions": {
            "reblur_psnr": f"PSNR of the mean of the student's K = {DEFAULT_K} frames (evenly spread over the "
                           f"exposure) against the blurry frame, dB; mean over held-out exposures",
            "teacher_agreement_psnr": "PSNR of the student's frames against the teacher's (the BSN + SR "
                                      "cascade it distilled from: fine-tuned, or kept) at the same timestamps, "
                                      "dB; mean over frames and held-out exposures",
        },
        "before": {key: mean("before", key) for key in ("reblur_psnr", "teacher_agreement_psnr")},
        "after": {key: mean("after", key) for key in ("reblur_psnr", "teacher_agreement_psnr")},
        "firing_gain": gain_block,
        "exposures": entries,
    }


#: the report's estimate is scaled by this, for what timing one frame misses (loading models and images); the report
#: records its estimate beside its own time (``budget.report``)
REPORT_MARGIN = 1.1
#: the split and the report may take at most this much of the budget (else a ConfigError asks for more)
RESERVE_MAX_FRACTION = 0.5


def report_estimate(held_views: Sequence[Path], model: Path, nets: Mapping[str, Path], device: str,
                    tfp_window: int) -> dict:
    """How long the report (:func:`build_report`) will take on ``held_views``, timed on the first held-out exposure
    with the starting student ``model`` (the adapted one has the same architecture, so the same cost) and the
    teacher ``nets`` the report uses: the teacher on its K indicator frames (one call, as the report makes it: the
    long-window SR it shares is paid once per exposure), times the held-out exposures; the other parts on one
    frame (its centre), times the held-out frames: per indicator frame each student once; per ground-truth frame,
    for each student, the student, ``evaluate``'s SDM and its scores (PSNR and SSIM of blurry, SDM, student);
    x :data:`REPORT_MARGIN`. The probe itself costs about one held-out exposure's teacher frames."""
    from spikereveal.engines.checkpoint import load_checkpoint
    from spikereveal.kernels import reblur
    from spikereveal.kernels.timing import DEFAULT_K
    from spikereveal.recording import GT_FILE, open_recording
    from spikereveal.training import datasets as ds
    from spikereveal.training.evaluate import psnr, run_student, ssim
    from spikereveal.training.train import resolve_device

    started = time.perf_counter()
    exposures = ds.load_exposures([os.fspath(v) for v in held_views], k=DEFAULT_K)
    truth_frames = 0
    for view in held_views:
        if (Path(view) / GT_FILE).is_file():
            with open_recording(view, strict=False) as recording:
                truth_frames += sum(len(recording.ground_truth_for(e.index)) for e in recording.exposures)
    target = resolve_device(device)
    bsn, _ = load_checkpoint(nets["bsn"], expected_kind="bsn", map_location=target)
    sr, _ = load_checkpoint(nets["sr"], expected_kind="sr", map_location=target)
    student, _ = _student_fn(model, device)
    exposure = exposures[0]
    centre = exposure.window.centers[len(exposure.window.centers) // 2 : len(exposure.window.centers) // 2 + 1]
    seconds = {}
    clock = time.perf_counter()
    teacher_frames = ds.network_teacher(bsn.eval(), sr.eval(), tfp_window)(exposure, exposure.window.centers)
    teacher_s = time.perf_counter() - clock  # the exposure's K frames in one call
    clock = time.perf_counter()
    frame = run_student(student, exposure, centre)
    seconds["student"] = time.perf_counter() - clock
    clock = time.perf_counter()
    ds.sdm_teacher(tfp_window)(exposure, centre)
    seconds["sdm"] = time.perf_counter() - clock
    clock = time.perf_counter()
    psnr(exposure.blurry, reblur(frame)), ssim(np.clip(teacher_frames[len(teacher_frames) // 2], 0, 1), frame[0])
    seconds["scores"] = time.perf_counter() - clock  # one PSNR and one SSIM
    indicator_frames = DEFAULT_K * len(exposures)
    indicators_s = len(exposures) * teacher_s + indicator_frames * 2 * seconds["student"]
    truth_s = truth_frames * 2 * (seconds["student"] + seconds["sdm"] + 3 * seconds["scores"])
    estimate = REPORT_MARGIN * (indicators_s + truth_s)
    return {"held_out_exposures": len(exposures), "indicator_frames": indicator_frames,
            "ground_truth_frames": truth_frames, "teacher_per_exposure_s": round(teacher_s, 3),
            "per_frame_s": {k: round(v, 4) for k, v in seconds.items()},
            "estimate_s": round(estimate, 1), "probe_s": round(time.perf_counter() - started, 1)}


def _ground_truth(held_views: Sequence[Path], sources: Mapping[str, str], before: Path, after: Path,
                  device: str) -> dict | None:
    """PSNR/SSIM before and after against ``gt.csv`` on the held-out views that have it (``evaluate``)."""
    from spikereveal.recording import GT_FILE
    from spikereveal.training.evaluate import evaluate

    with_truth = [v for v in held_views if (Path(v) / GT_FILE).is_file()]
    if not with_truth:
        return None
    block: dict[str, Any] = {"recordings": [sources[os.fspath(v)] for v in with_truth]}
    for name, path in (("before", before), ("after", after)):
        student, _ = _student_fn(path, device)
        report = evaluate([os.fspath(v) for v in with_truth], student=student, use_calibration=False)
        block[name] = {key: report["methods"]["student"][key] for key in ("psnr", "ssim", "psnr_center", "ssim_center")}
        block["blurry"] = {key: report["methods"]["blurry"][key] for key in ("psnr", "ssim")}
        block["frames"] = report["frames"]
    return block


def build_report(config: AdaptConfig, state: dict, split: Split, held_views, sources, starts, out: Path) -> dict:
    before, after = starts["ldn"], out / "ldn.pt"
    nets = config.teacher_paths(starts)
    indicators = _indicators(held_views, sources, before, after, nets, config.device,
                             int(state["stages"]["split"]["tfp_window"]))
    truth = _ground_truth(held_views, sources, before, after, config.device)
    stages = {kind: {"budget_s": round(config.stage_budget_s(kind), 1), **state["stages"].get(kind, {})}
              for kind in ("synth", *TRAINED)}
    synth = state["stages"].get("synth") or {}
    return {
        "format": REPORT_FORMAT,
        "version": 1,
        "arguments": {**state["identity"], "time_budget_min": config.time_budget_min, "device": config.device,
                      "threads": config.threads},
        "split": split.to_dict(config.holdout_every),
        "budget": {
            "time_budget_min": config.time_budget_min,
            "shares": {**config.shares(), "export": round(1.0 - sum(STAGE_SHARES.values()), 4)},
            "rule": "the student's share also pays for the split and the report (their measured reserve, "
                    "budget.report) and gets what the earlier stages left unspent (its carried_s); each stage "
                    "trains one epoch, then plans 1 + (its budget - time spent) // "
                    f"first-epoch time epochs (at most {MAX_EPOCHS}) under the per-epoch cosine schedule; the "
                    "stage's budget is also its hard time limit",
            "stages": stages,
        },
        "models": {
            "student_before": os.fspath(before), "student_after": os.fspath(after),
            "teacher_bsn_before": os.fspath(starts["bsn"]), "teacher_bsn_after": os.fspath(nets["bsn"]),
            "teacher_sr_before": os.fspath(starts["sr"]), "teacher_sr_after": os.fspath(nets["sr"]),
            "onnx": os.fspath(out / ONNX_FILE),
        },
        "teacher": {"distil_from": config.distil_from, "nets": config.teacher_nets,
                    "training_firing_gain": state["stages"]["split"].get("firing_gain"),
                    "tfp_window": int(state["stages"]["split"]["tfp_window"]),
                    "rule": f"short TFP window = {DEFAULT_TFP_SHORT_WINDOW} / (median firing gain of the training "
                            f"exposures), odd, within [{DEFAULT_TFP_SHORT_WINDOW}, {MAX_TFP_SHORT_WINDOW}] "
                            "(training.train_config.tfp_window_for_gain)"},
        "synthetic": {"mode": config.synthetic, "recordings": synth.get("recordings", []),
                      "exposures": synth.get("exposures", 0), "threshold_scale": synth.get("threshold_scale"),
                      "geometry": synth.get("geometry"),
                      "rule": "simulated recordings (sim.suites.sensor_matched: dead leaves, synthetic patterns, "
                              "scikit-image train pictures; camera motion with sprites) on the rig's geometry, clock "
                              "and exposure length, threshold = 1 / (median firing gain of the training exposures) "
                              "x 0.9-1.1; the student's targets on them are their ground truth"},
        "indicators": indicators,
        "ground_truth": truth,
    }


def _fmt(value, digits=2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_report(report: Mapping) -> str:
    """The report as Markdown (also what the CLI prints)."""
    split, ind = report["split"], report["indicators"]
    lines = ["# spikereveal adapt report", "",
             f"Trained on {split['train_exposures']} exposure(s), held out {split['held_out_exposures']} "
             f"(every {_ordinal(split['holdout_every'])} usable one, at least one):"]
    for item in split["held_out"]:
        lines.append(f"- held out: {item['recording']} exposures {', '.join(map(str, item['exposures']))}")
    for item in split["unusable"]:
        lines.append(f"- not usable (spike window incomplete): {item['recording']} exposures "
                     f"{', '.join(map(str, item['exposures']))}")
    lines += ["", "| held-out indicator | before | after | change |", "| --- | ---: | ---: | ---: |"]
    rows = [("student re-blur PSNR (dB)", ind["before"]["reblur_psnr"], ind["after"]["reblur_psnr"]),
            ("agreement with the teacher, PSNR (dB)", ind["before"]["teacher_agreement_psnr"],
             ind["after"]["teacher_agreement_psnr"])]
    truth = report.get("ground_truth")
    if truth:
        rows += [("PSNR vs ground truth (dB)", truth["before"]["psnr"], truth["after"]["psnr"]),
                 ("SSIM vs ground truth", truth["before"]["ssim"], truth["after"]["ssim"])]
    for name, before, after in rows:
        digits = 4 if name.startswith("SSIM") else 2
        lines.append(f"| {name} | {_fmt(before, digits)} | {_fmt(after, digits)} | {after - before:+.{digits}f} |")
    change = ind["after"]["reblur_psnr"] - ind["before"]["reblur_psnr"]
    agreement = ind["after"]["teacher_agreement_psnr"] - ind["before"]["teacher_agreement_psnr"]
    if change < 0 and agreement < 0:
        judge = ("judge by the ground-truth rows" if truth else
                 "compare the two models on a few held-out frames by eye (deblur --onnx) before deploying")
        lines += ["", "The adapted student is further from both the blur and the teacher on the held-out exposures "
                      "than the one it started from. Neither is a quality score: trained on simulated recordings' "
                      "ground truth, a student can move away from both and still improve (measured: training/README.md, "
                      f"\"Adapting to your rig\"), so {judge}."]
    gain = ind["firing_gain"]
    held = gain["held_out"]
    lines += ["", f"Firing gain of the held-out data (spikes per frame at full intensity): mean "
                  f"{_fmt(held['mean'], 3)} (min {_fmt(held['min'], 3)}, max {_fmt(held['max'], 3)})."]
    for name in ("before", "after"):
        trained = gain[name]["trained_range"]
        where = ("declares no trained range" if trained is None else
                 f"trained range {trained[0]:g}-{trained[1]:g}: "
                 + ("OUT OF DOMAIN" if gain[name]["out_of_domain"] else "inside"))
        lines.append(f"- student {name}: {where}")
    teacher = report.get("teacher")
    if teacher:
        lines.append(f"- the teacher's short TFP window: {teacher['tfp_window']} frames (median firing gain of the "
                     f"training exposures {_fmt(teacher['training_firing_gain'], 3)})")
        source, kept = teacher.get("distil_from", "teacher"), teacher.get("nets") == "keep"
        which = "starting (kept, --teacher-nets keep)" if kept else "fine-tuned"
        lines.append("- the student distilled from " + (
            f"the {which} teacher" if source == "teacher"
            else f"the mean of the {which} teacher's and the starting student's frames") + f" (--distil-from {source})")
    synthetic = report.get("synthetic") or {}
    if synthetic.get("mode") == "matched":
        lines.append(f"- simulated beside the rig's recordings (--synthetic matched): {synthetic['exposures']} "
                     f"exposure(s) in {len(synthetic['recordings'])} recording(s) at threshold "
                     f"x{_fmt(synthetic['threshold_scale'], 3)} of the simulator's preset, trained on their ground "
                     f"truth")
    if truth:
        lines.append(f"\nGround truth: {truth['frames']} frame(s) of {', '.join(truth['recordings'])}; the blurry "
                     f"input scores {_fmt(truth['blurry']['psnr'])} dB / {_fmt(truth['blurry']['ssim'], 4)}.")
    lines += ["", "| stage | budget (s) | spent (s) | epochs | stopped |", "| --- | ---: | ---: | ---: | --- |"]
    for kind, stage in report["budget"]["stages"].items():
        if stage.get("status") == "kept":
            lines.append(f"| {kind} | 0 | 0 | kept as it was | - |")
            continue
        if kind == "synth":
            if stage.get("status") == "done":
                lines.append(f"| synth | {stage['budget_s']:.0f} | {_fmt(stage.get('elapsed_s'), 0)} | "
                             f"{stage.get('exposures', 0)} exposure(s) simulated | {stage.get('stopped') or 'no'} |")
            continue
        epochs = f"{stage.get('epochs_completed', 0)}/{stage.get('planned_epochs', '?')}"
        carried = f" (+{stage['carried_s']:.0f} unspent earlier)" if stage.get("carried_s") else ""
        lines.append(f"| {kind} | {stage['budget_s']:.0f}{carried} | {_fmt(stage.get('elapsed_s'), 0)} | {epochs} | "
                     f"{stage.get('stopped') or 'no'} |")
    timed = report["budget"].get("report") or {}
    if "reserve_s" in timed:
        lines.append(f"| split + report | {timed['reserve_s']:.0f} (from ldn's share) | "
                     f"{_fmt(timed.get('elapsed_s'), 0)} (report; estimated {timed['estimate_s']:.0f}) | - | - |")
    models = report["models"]
    lines += ["", f"Student: {models['student_after']} (ONNX {models['onnx']}); started from "
                  f"{models['student_before']}."]
    return "\n".join(lines) + "\n"


# -- the whole run ---------------------------------------------------------------------------------------------------
def adapt(config: AdaptConfig, progress: AdaptProgressFn | None = None) -> AdaptResult:
    """Run (or continue) the adaptation described in the module doc; returns the report and the outputs."""
    started = time.perf_counter()
    out = Path(config.out)
    state = _prepare_out(config)
    starts = _starting_points(config)
    split = split_recordings(config.data, config.holdout_every)
    out.mkdir(parents=True, exist_ok=True)
    current = split.to_dict(config.holdout_every)
    indices = {"train": [list(g) for g in split.train], "held_out": [list(g) for g in split.held_out]}
    if state.get("split_indices") not in (None, indices):
        raise ConfigError(
            f"the recordings changed since {out} was started (their usable exposures differ from the split "
            f"in {out / STATE_FILE}); pass --force to start over"
        )
    state["split"], state["split_indices"] = current, indices
    state["runs"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "time_budget_min": config.time_budget_min,
                          "threads": config.threads, "device": config.device})
    save = lambda: _save_state(out, state)  # noqa: E731
    save()
    emit_raw = progress or (lambda event: None)
    ran: list[str] = []
    skipped: list[str] = []

    def emitter(stage: str):
        index = STAGES.index(stage) + 1

        def emit(status: str, message: str = "", train=None) -> None:
            emit_raw(AdaptProgress(stage, index, len(STAGES), status, message, train))

        return emit

    def done(stage: str) -> bool:
        return (state["stages"].get(stage) or {}).get("status") == "done"

    # 1. split: the views are rebuilt every call (cheap, deterministic, links only)
    emit = emitter("split")
    emit("start", f"{current['train_exposures']} exposure(s) to train on, {current['held_out_exposures']} held out")
    train_views, held_views, sources = write_views(split, out / VIEWS_DIR)
    previous = state["stages"].get("split") or {}
    if "tfp_window" in previous:  # a re-run on the same split (checked above): the gain measured then
        gain, tfp_window = previous.get("firing_gain"), int(previous["tfp_window"])
    else:  # reads every training exposure's spikes: once per output directory
        measured = data_firing_gain(train_views)
        gain = None if math.isnan(measured) else round(measured, 4)
        tfp_window = tfp_window_for_gain(measured)
    split_s = previous.get("elapsed_s", round(time.perf_counter() - started, 1))  # the first run's
    state["stages"]["split"] = {"status": "done", "firing_gain": gain, "tfp_window": tfp_window, "elapsed_s": split_s}
    save()
    emit("done", f"firing gain {_fmt(gain)}: the teacher's short TFP window is {tfp_window} frames")

    # 2. sensor-matched simulated recordings (the student's ground-truth targets)
    emit = emitter("synth")
    synthetic: list[Path] = []
    record = state["stages"].setdefault("synth", {})
    if not config.simulates:
        state["stages"]["synth"] = {"status": "off"}
        save()
        emit("skip", "no simulated recordings (--synthetic off)")
    elif record.get("status") == "done" and all(_sim_complete(p) for p in record.get("recordings", [])):
        synthetic = [Path(p) for p in record["recordings"]]
        skipped.append("synth")
        emit("skip", f"{len(synthetic)} simulated recording(s) already written ({out / SYNTHETIC_DIR})")
    else:
        emit("start", f"up to {config.synthetic_exposures} exposure(s) on a sensor like the rig's, budget "
                      f"{config.stage_budget_s('synth'):.0f} s")
        synthetic = _synthesize(config, record, out, train_views, gain, emit, save)
        ran.append("synth")
        emit("done", f"{record.get('exposures', 0)} exposure(s) in {len(synthetic)} recording(s) at threshold "
                     f"x{record['threshold_scale']:g}")

    # 3-5. the teacher's nets, then the student
    for kind in TRAINED:
        emit = emitter(kind)
        if kind != "ldn" and not config.trains_teacher:
            state["stages"][kind] = {"status": "kept", "checkpoint": os.fspath(starts[kind])}
            save()
            emit("skip", f"kept {starts[kind]} as it is (--teacher-nets keep)")
            continue
        if done(kind):
            skipped.append(kind)
            emit("skip", f"{kind} already done ({out / (kind + '.pt')})")
            continue
        carried = unspent_s(config, state["stages"]) if kind == "ldn" else 0.0
        data = [*train_views, *synthetic] if kind == "ldn" else train_views
        measure = None if kind != "ldn" else (  # the teacher nets are final by now (fine-tuned or kept)
            lambda: report_estimate(held_views, starts["ldn"], config.teacher_paths(starts), config.device, tfp_window))
        stage = _Stage(kind, config, state, out, data, starts, split.smallest_side, emit, save, tfp_window,
                       measure_report=measure, other_s=float(state["stages"]["split"]["elapsed_s"]),
                       carried_s=carried)
        emit("start", f"budget {stage.share_s:.0f} s"
                      + (f" ({carried:.0f} s of it left unspent by the earlier stages)" if carried > 0 else ""))
        stage.run()
        ran.append(kind)
        record = state["stages"][kind]
        emit("done", f"{record.get('epochs_completed', 0)} epoch(s)"
                     + (f", stopped: {record['stopped']}" if record.get("stopped") else ""))

    # 6. export
    emit = emitter("export")
    onnx = out / ONNX_FILE
    if done("export") and onnx.is_file():
        skipped.append("export")
        emit("skip", f"already exported ({onnx})")
    else:
        from spikereveal.engines.export import ExportConfig, export_checkpoint

        emit("start", "dynamic-shape ONNX")
        export_checkpoint(out / "ldn.pt", onnx, ExportConfig(dynamic=True))
        state["stages"]["export"] = {"status": "done", "onnx": os.fspath(onnx)}
        save()
        ran.append("export")
        emit("done", os.fspath(onnx))

    # 7. report
    emit = emitter("report")
    report_path = out / REPORT_JSON
    if done("report") and report_path.is_file():
        skipped.append("report")
        emit("skip", f"already written ({report_path})")
        report = json.loads(report_path.read_text(encoding="utf-8"))
    else:
        emit("start", "indicators on the held-out exposures, before and after")
        if config.threads is not None:
            import torch

            torch.set_num_threads(config.threads)
        clock = time.perf_counter()
        report = build_report(config, state, split, held_views, sources, starts, out)
        timed = state["stages"]["ldn"].get("report_time")  # absent in a run started before the measurement
        report["budget"]["report"] = {**(timed or {}), "elapsed_s": round(time.perf_counter() - clock, 1)}
        partial = report_path.with_name(report_path.name + ".partial")
        partial.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        os.replace(partial, report_path)
        (out / REPORT_MD).write_text(format_report(report), encoding="utf-8")
        state["stages"]["report"] = {"status": "done"}
        save()
        ran.append("report")
        emit("done", os.fspath(report_path))
    outputs = {"report": report_path, "report_md": out / REPORT_MD, "onnx": onnx, "ldn": out / "ldn.pt",
               **config.teacher_paths(starts)}
    return AdaptResult(out, report, tuple(ran), tuple(skipped), outputs)


__all__ = [
    "AdaptConfig",
    "AdaptProgress",
    "AdaptResult",
    "MAX_EPOCHS",
    "STAGES",
    "STAGE_SHARES",
    "EARLIER_STAGES",
    "STUDENT_RECIPE",
    "adapt",
    "format_report",
    "plan_epochs",
    "unspent_s",
    "split_recordings",
    "write_view",
]
