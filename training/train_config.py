"""Training arguments (no torch here: the CLI builds its parser from these defaults)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from spikereveal.errors import ConfigError
from spikereveal.kernels.images import COLOUR_ANCHORS  # torch-free: how the student's frames keep their colour
from spikereveal.kernels.sensor import SPIKE_NORMS  # torch-free: how the student reads its spikes
from spikereveal.kernels.timing import DEFAULT_MARGIN_FRAMES

#: the student's architectures (``engines.ldn.LDN_VARIANTS``; repeated here so the CLI needs no torch)
LDN_VARIANTS = ("paper", "lite", "lite-fused")

#: TFP_short window of the reference implementation (frames); M timestamps per exposure in the LDN loss.
DEFAULT_TFP_SHORT_WINDOW = 9
DEFAULT_LDN_TIMESTAMPS = 5
#: the longest short TFP window: the spike margin recorded on each side of an exposure's frames (21 frames)
MAX_TFP_SHORT_WINDOW = 2 * DEFAULT_MARGIN_FRAMES + 1


def tfp_window_for_gain(firing_gain: float) -> int:
    """The short TFP window (odd, frames) that holds as many expected spikes at ``firing_gain`` as the
    reference window (:data:`DEFAULT_TFP_SHORT_WINDOW`) at the preset's gain of 1 spike per pixel per frame at
    full intensity: ``9 / gain`` rounded to an odd number, within [9, 21]. A sensor with a higher threshold
    fires less: the teacher's BSN then denoises a TFP of ~9 spikes' worth of light instead of ~9 / x (at
    threshold x3 on the val family: 9 frames gave the shipped teacher 23.22 dB, 21 frames 24.49 dB). A gain
    that is not a positive number gives the reference window."""
    gain = float(firing_gain)
    if not (math.isfinite(gain) and gain > 0):
        return DEFAULT_TFP_SHORT_WINDOW
    frames = DEFAULT_TFP_SHORT_WINDOW / gain
    odd = 2 * int(math.floor((frames - 1) / 2 + 0.5)) + 1
    return int(min(max(odd, DEFAULT_TFP_SHORT_WINDOW), MAX_TFP_SHORT_WINDOW))


def check_tfp_window(window: int) -> int:
    """``window`` when it is a usable short TFP window (odd, 1 to :data:`MAX_TFP_SHORT_WINDOW` frames); else
    ConfigError."""
    if window < 1 or window % 2 == 0 or window > MAX_TFP_SHORT_WINDOW:
        raise ConfigError(f"the short TFP window must be odd and at most {MAX_TFP_SHORT_WINDOW} frames, got {window}")
    return int(window)


KINDS = ("bsn", "sr", "ldn")
#: "nets": the BSN+SR cascade; "sdm": the plain SDM; "ldn": a trained student (e.g. the shipped default), whose
#: clipped frames are the targets (distilling a smaller student from a larger one, issue 18); "nets+ldn": the
#: mean of the two, frame by frame (``adapt``'s student stage on a rig where the cascade alone is no better than
#: the student: the mean of two estimates whose errors differ beats both, see training/README.md); "gt": the
#: recordings' own sharp frames (``gt.csv``, simulated recordings: supervised training)
TEACHERS = ("nets", "sdm", "ldn", "nets+ldn", "gt")
#: Where the student's targets come from on recordings that carry ground truth (``gt.csv``): "ignore" it (every
#: recording gets the teacher's), or "where-recorded": such recordings are trained on their own sharp frames and
#: the others on the teacher's (``adapt`` mixes sensor-matched simulated recordings with the rig's own this way).
GROUND_TRUTH_USES = ("ignore", "where-recorded")
#: Mixed precision of the forward passes: "off" (float32) or "bf16" (torch.autocast to bfloat16; weights,
#: optimizer and losses stay float32). bf16 pays off on CPUs with AVX512-BF16/AMX and on recent GPUs.
AUTOCAST_CHOICES = ("off", "bf16")

#: How the re-blur term averages the student's frames: the paper's plain mean, or the trapezoid rule
#: (first and last timestamp weigh half), which follows the exposure's mean more closely.
REBLUR_RULES = ("mean", "trapezoid")
#: Which of the student's frames the re-blur term back-propagates through: "all", or only the "distilled"
#: ones (the re-blur-only frames then run without a gradient, about a third of their cost).
REBLUR_GRADIENTS = ("all", "distilled")

#: Per-network defaults: the paper's learning rates; crops in spike pixels (image crops are 4x).
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "bsn": {"lr": 3e-4, "crop": 64, "batch_size": 8},
    "sr": {"lr": 2e-4, "crop": 48, "batch_size": 8},
    "ldn": {"lr": 1e-3, "crop": 32, "batch_size": 4},
}
COMMON_DEFAULTS: dict[str, Any] = {
    "epochs": 20,
    "seed": 0,
    "crops_per_exposure": 8,
    "augment": True,
    "tfp_window": DEFAULT_TFP_SHORT_WINDOW,
    "timestamps": DEFAULT_LDN_TIMESTAMPS,
    "lambda_teacher": 1.0,
    "lambda_reblur": 100.0,
    "teacher": "sdm",
    "teacher_bsn": None,
    "teacher_sr": None,
    "teacher_ldn": None,
    "init": None,
    "autocast": "off",
    "teacher_autocast": "off",
    "lambda_ssim": 1.0,
    "reblur_timestamps": None,  # None: the distilled timestamps (the paper's loss)
    "reblur_rule": "mean",
    "reblur_gradient": "all",
    "ground_truth": "ignore",
    "spike_norm": None,  # None: the paper's raw spikes for a fresh student, the --init checkpoint's own otherwise
    "variant": None,  # None: the paper's network for a fresh student, the --init checkpoint's own otherwise
    "colour_anchor": None,  # None: "none" for a fresh student, the --init checkpoint's own otherwise
}


#: the student's network config (``engines.ldn.LDNConfig``) fields that ``train ldn`` sets (None: the --init
#: checkpoint's own, else the network's default)
NETWORK_FIELDS = ("spike_norm", "variant", "colour_anchor")


def distilled_positions(reblur_count: int, distilled_count: int) -> list[int]:
    """Which of ``reblur_count`` (N) evenly spread timestamps, first and last included, are the
    ``distilled_count`` (M) evenly spread ones: every ``(N - 1) / (M - 1)``-th. ConfigError when they are
    not a subset (N must be M + j (M - 1), e.g. 9 or 13 for M = 5)."""
    n, m = int(reblur_count), int(distilled_count)
    if n == m and m >= 1:
        return list(range(m))
    if m < 2 or n < m or (n - 1) % (m - 1):
        raise ConfigError(
            f"the {m} distilled timestamps must be among the {n} re-blur timestamps: use N = M + j (M - 1) "
            f"re-blur timestamps with M >= 2 (e.g. --timestamps 5 --reblur-timestamps 9 or 13)"
        )
    return list(range(0, n, (n - 1) // (m - 1)))


@dataclass(frozen=True)
class TrainConfig:
    """Training arguments. ``None`` means "the default for this network" (or, on resume, the saved value).

    ``samples_per_epoch`` defaults to ``crops_per_exposure`` × the number of usable exposures. LDN only:
    ``teacher`` ("nets": the BSN+SR cascade from ``teacher_bsn``/``teacher_sr``; "sdm": plain SDM),
    ``timestamps`` (M), the two loss weights, ``init`` (an LDN checkpoint to fine-tune), ``distillation``
    (the distance to the teacher) and ``teacher_autocast`` (precision of the teacher nets computing the
    targets). ``reblur_timestamps`` (N, default M): the re-blur term's timestamps, a finer evenly spread
    set containing the M distilled ones; ``reblur_rule``: how they are averaged (``REBLUR_RULES``);
    ``reblur_gradient``: which frames the re-blur term back-propagates through (``REBLUR_GRADIENTS``).
    ``autocast``: precision of the trained network's forward pass (see ``AUTOCAST_CHOICES``).
    ``teacher`` "ldn" distils from the student checkpoint ``teacher_ldn``, "nets+ldn" from the mean of the cascade's
    and that student's frames, "gt" from the recordings' own sharp frames (``gt.csv``: simulated recordings,
    supervised training). ``ground_truth`` "where-recorded" (``GROUND_TRUTH_USES``): recordings with ``gt.csv``
    get their sharp frames as targets whatever ``teacher`` is, the others the teacher's. ``variant`` (LDN): the
    architecture (``LDN_VARIANTS``); with an ``init`` of another variant, the tensors whose names and shapes match are
    copied (a warm start) and the rest start fresh.
    """

    kind: str
    epochs: int | None = None
    batch_size: int | None = None
    crop: int | None = None
    lr: float | None = None
    seed: int | None = None
    samples_per_epoch: int | None = None
    crops_per_exposure: int | None = None
    augment: bool | None = None
    tfp_window: int | None = None
    timestamps: int | None = None
    lambda_teacher: float | None = None
    lambda_reblur: float | None = None
    teacher: str | None = None
    teacher_bsn: str | None = None
    teacher_sr: str | None = None
    teacher_ldn: str | None = None
    init: str | None = None
    autocast: str | None = None
    teacher_autocast: str | None = None
    lambda_ssim: float | None = None
    reblur_timestamps: int | None = None
    reblur_rule: str | None = None
    reblur_gradient: str | None = None
    spike_norm: str | None = None
    variant: str | None = None
    ground_truth: str | None = None
    colour_anchor: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"unknown network {self.kind!r}; train one of {list(KINDS)}")
        positive_ints = ("epochs", "batch_size", "crop", "samples_per_epoch", "crops_per_exposure", "timestamps",
                         "reblur_timestamps")
        for name in positive_ints:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"training {name} must be a positive integer, got {value!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise ConfigError(f"the seed must be an integer >= 0, got {self.seed!r}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"the learning rate must be a positive number, got {self.lr!r}")
        for name in ("lambda_teacher", "lambda_reblur", "lambda_ssim"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        if self.tfp_window is not None and (self.tfp_window < 1 or self.tfp_window % 2 == 0):
            raise ConfigError(f"the short TFP window must be an odd number of frames, got {self.tfp_window!r}")
        if self.teacher is not None and self.teacher not in TEACHERS:
            raise ConfigError(f"unknown teacher {self.teacher!r}; use one of {list(TEACHERS)}")
        for name, choices in (("autocast", AUTOCAST_CHOICES), ("teacher_autocast", AUTOCAST_CHOICES),
                              ("reblur_rule", REBLUR_RULES), ("reblur_gradient", REBLUR_GRADIENTS),
                              ("spike_norm", SPIKE_NORMS), ("colour_anchor", COLOUR_ANCHORS)):
            value = getattr(self, name)
            if value is not None and value not in choices:
                raise ConfigError(f"unknown {name} {value!r}; use one of {list(choices)}")
        if self.variant is not None and self.variant not in LDN_VARIANTS:
            raise ConfigError(f"unknown LDN variant {self.variant!r}; use one of {list(LDN_VARIANTS)}")
        if self.ground_truth is not None and self.ground_truth not in GROUND_TRUTH_USES:
            raise ConfigError(f"unknown ground_truth {self.ground_truth!r}; use one of {list(GROUND_TRUTH_USES)}")
        if self.reblur_timestamps is not None:
            distilled_positions(self.reblur_timestamps, self.timestamps or DEFAULT_LDN_TIMESTAMPS)
        if self.teacher in ("nets", "nets+ldn") and self.kind == "ldn" and not (self.teacher_bsn and self.teacher_sr):
            raise ConfigError(
                f"the network teacher (--teacher {self.teacher}) needs both --teacher-bsn CKPT and --teacher-sr CKPT "
                "(or use --teacher sdm)"
            )
        if self.teacher in ("ldn", "nets+ldn") and self.kind == "ldn" and not self.teacher_ldn:
            raise ConfigError(f"the student teacher (--teacher {self.teacher}) needs --teacher-ldn CKPT (a trained LDN "
                              "checkpoint, or 'default' for the shipped student)")
        if self.kind != "ldn":
            extra = [n for n in ("teacher_bsn", "teacher_sr", "teacher_ldn", "reblur_timestamps") + NETWORK_FIELDS
                     if getattr(self, n) is not None]
            extra += [name for name in ("reblur_rule", "reblur_gradient", "ground_truth")
                      if getattr(self, name) not in (None, COMMON_DEFAULTS[name])]
            if self.teacher in ("nets", "ldn", "nets+ldn", "gt"):
                extra.append("teacher")
            if extra:
                raise ConfigError(f"{', '.join(extra)} only apply to training the ldn student, not {self.kind}")

    @property
    def reblur_count(self) -> int:
        """N, the timestamps per exposure the student runs at (re-blur term); M when not set."""
        return self.reblur_timestamps or self.timestamps or DEFAULT_LDN_TIMESTAMPS

    def with_defaults(self) -> "TrainConfig":
        """Every ``None`` replaced by the default (``samples_per_epoch`` stays ``None`` until data is known)."""
        values = {**COMMON_DEFAULTS, **KIND_DEFAULTS[self.kind]}
        if self.kind == "ldn" and self.teacher is None and self.teacher_bsn and self.teacher_sr:
            values["teacher"] = "nets"
        if self.kind == "ldn" and self.teacher is None and self.teacher_ldn:
            values["teacher"] = "ldn"
        updates = {name: value for name, value in values.items() if getattr(self, name) is None}
        return replace(self, **updates)

    def over(self, saved: "TrainConfig") -> "TrainConfig":
        """``saved`` with every field that this config sets explicitly (not ``None``) taking precedence."""
        if saved.kind != self.kind:
            raise ConfigError(f"cannot resume a {saved.kind} run as {self.kind}")
        updates = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        return replace(saved, **updates)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


@dataclass(frozen=True)
class RunOptions:
    """How to run (not part of what is trained): device string, CPU threads, wall-clock limit.

    ``distributed``: this process is one rank of a torchrun launch (``training.distributed``): ``device``
    "cpu" (gloo) or "cuda" (nccl, each rank on ``cuda:LOCAL_RANK``), ``threads`` per process.
    """

    device: str = "cpu"
    threads: int | None = None
    time_limit_min: float | None = None
    num_workers: int = 0
    cache_dir: str | None = None  # LDN: keep the teacher's targets on disk between runs
    distributed: bool = False

    def __post_init__(self):
        if self.threads is not None and (isinstance(self.threads, bool) or self.threads < 1):
            raise ConfigError(f"--threads must be >= 1, got {self.threads!r}")
        if self.time_limit_min is not None and not (self.time_limit_min > 0):
            raise ConfigError(f"--time-limit-min must be > 0 minutes, got {self.time_limit_min!r}")
        if self.num_workers < 0:
            raise ConfigError(f"the number of data loader workers must be >= 0, got {self.num_workers!r}")
