"""Training loops for the teacher's BSN and SR and for the student LDN (SPEC §3).

One loop serves the three networks: Adam, a cosine learning-rate schedule stepped once per epoch
(``lr_e = lr · (1 + cos(π e / epochs)) / 2`` for epoch ``e`` = 0 … epochs−1), seeded data (see
``datasets``), a checkpoint after every epoch, an optional wall-clock limit, and exact resumption.

Files written for ``out = model.pt``:

- ``model.pt``: a spikereveal checkpoint (``engines.checkpoint``) with the network config, the training
  arguments, the progress (epochs completed, loss history) and the software versions. This is the file
  to ship or to pass to ``eval``/``export``.
- ``model.pt.optim``: the optimizer's moments, next to it, so that ``--resume model.pt`` continues the
  very same run (the shipped checkpoint stays small). Without it a resume starts fresh Adam moments.

Under torchrun (``RunOptions.distributed``) the same loop runs data-parallel: see ``training.distributed``
for what is split (each global batch, the teacher targets) and what rank 0 alone does (checkpoints,
progress). ``batch_size`` is the global batch, so a run gives the same optimiser steps on any number of
processes and resumes on any number that divides the batch.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.utils.data import DataLoader

from spikereveal.errors import ConfigError
from spikereveal.training import bsn, distributed, sr
from spikereveal.training import datasets as ds
from spikereveal.training.losses import LdnLossWeights, bsn_loss, ldn_loss, sr_loss
from spikereveal.training.train_config import (KIND_DEFAULTS, KINDS, NETWORK_FIELDS, RunOptions, TrainConfig,
                                               distilled_positions)

log = logging.getLogger(__name__)

#: importing the teacher networks registers their checkpoint kinds with engines.checkpoint
TEACHER_NETWORKS = {"bsn": bsn.BSN, "sr": sr.SR}

OPTIMIZER_SUFFIX = ".optim"


@dataclass(frozen=True)
class TrainProgress:
    """One progress report. ``phase``: "prepare" (loading/teacher targets), "step" or "epoch"."""

    phase: str
    kind: str
    epoch: int  # 0-based epoch in progress
    epochs: int
    step: int  # steps done in this epoch (prepare: items done)
    steps: int
    losses: Mapping[str, float] = field(default_factory=dict)  # running means over this epoch
    lr: float = 0.0
    elapsed_s: float = 0.0
    message: str = ""


ProgressFn = Callable[[TrainProgress], None]


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    epochs_completed: int
    step_in_epoch: int
    finished: bool
    stopped_early: str | None
    history: tuple[Mapping[str, Any], ...]
    elapsed_s: float
    rank: int = 0  # this process's rank (0: the one that wrote the checkpoint and reported progress)
    world_size: int = 1
    teacher_targets_s: float | None = None  # LDN: loaded exposures -> targets of every exposure ready (slowest rank)


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """Learning rate of ``epoch`` (0-based) under the per-epoch cosine schedule."""
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(epoch, epochs) / epochs))


def resolve_device(device: str) -> torch.device:
    """``torch.device(device)`` with a clear error when it cannot be used here."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device} was asked for but PyTorch sees no CUDA device; use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return resolved


def optimizer_state_path(checkpoint: str | os.PathLike) -> Path:
    return Path(os.fspath(checkpoint) + OPTIMIZER_SUFFIX)


# -- network-specific parts ------------------------------------------------------------------------------
def _new_model(kind: str, network_config):
    from spikereveal.engines.checkpoint import build_model

    return build_model(kind, {} if network_config is None else network_config)


def _with_network_config(model, **changes):
    """The same weights in a network whose config differs in ``changes`` (e.g. the LDN's spike_norm)."""
    rebuilt = _new_model("ldn", replace(model.config, **changes))
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt


def warm_start(model, source) -> list[str]:
    """Copy into ``model`` every tensor of ``source`` with the same name and shape (e.g. a paper LDN's encoders
    and attention into a lite LDN); returns the copied names. The rest of ``model`` keeps its fresh weights."""
    target = model.state_dict()
    copied = [name for name, tensor in source.state_dict().items()
              if name in target and tuple(target[name].shape) == tuple(tensor.shape)]
    model.load_state_dict({**target, **{name: source.state_dict()[name] for name in copied}})
    return copied


def autocast_context(device: torch.device, autocast: str):
    """The forward-pass precision context for ``autocast`` ("off" or "bf16", see ``AUTOCAST_CHOICES``)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast == "bf16")


def _teacher_fn(config: TrainConfig, device: torch.device, cache_dir: str | None) -> ds.TeacherFn:
    if config.teacher == "sdm":
        teacher, key = ds.sdm_teacher(config.tfp_window), f"sdm-w{config.tfp_window}"
    elif config.teacher == "ldn":
        teacher, key = _student_teacher(config.teacher_ldn, cache_dir)
    elif config.teacher == "nets":
        teacher, key = _network_teacher(config, device)
    elif config.teacher == "gt":
        teacher, key = ds.ground_truth_teacher(), f"gt-t{ds.GT_TOLERANCE_FRAMES}"
    else:  # "nets+ldn"
        (nets, nets_key), (student, student_key) = (_network_teacher(config, device),
                                                    _student_teacher(config.teacher_ldn, cache_dir))
        teacher, key = ds.mean_teacher(nets, student), f"mean-{nets_key}-{student_key}"
    if config.ground_truth == "where-recorded" and config.teacher != "gt":
        teacher, key = ds.ground_truth_where_recorded(teacher), f"gt-t{ds.GT_TOLERANCE_FRAMES}-or-{key}"
    return teacher if cache_dir is None else ds.cached_teacher(teacher, cache_dir, key)


def _network_teacher(config: TrainConfig, device: torch.device) -> tuple[ds.TeacherFn, str]:
    """The BSN+SR cascade of ``config.teacher_bsn``/``teacher_sr`` at ``config.tfp_window``, and its cache key."""
    from spikereveal.engines.checkpoint import load_checkpoint, sha256_of

    bsn, _ = load_checkpoint(config.teacher_bsn, expected_kind="bsn", map_location=device)
    sr, _ = load_checkpoint(config.teacher_sr, expected_kind="sr", map_location=device)
    teacher = ds.network_teacher(bsn.eval(), sr.eval(), config.tfp_window,
                                 precision=lambda: autocast_context(device, config.teacher_autocast))
    key = f"nets-{sha256_of(config.teacher_bsn)}-{sha256_of(config.teacher_sr)}-w{config.tfp_window}"
    if config.teacher_autocast != "off":
        key += f"-{config.teacher_autocast}"
    return teacher, key


def _student_teacher(model: str, cache_dir: str | None) -> tuple[ds.TeacherFn, str]:
    """The student ``model`` (a checkpoint or a shipped model's name) as a teacher, through its fp32 ONNX export
    (the shipped one for a shipped student; else exported once, with dynamic shapes, beside the cache)."""
    import tempfile

    from spikereveal.engines.checkpoint import sha256_of
    from spikereveal.engines.export import ExportConfig, export_checkpoint, resolve_model_path, shipped_onnx_for

    path = resolve_model_path(model, "--teacher-ldn")
    sha = sha256_of(path)
    onnx_path = shipped_onnx_for(path)
    if onnx_path is None:
        folder = Path(cache_dir) if cache_dir is not None else Path(tempfile.mkdtemp(prefix="spikereveal-teacher-"))
        onnx_path = folder / f"teacher-ldn-{sha[:16]}.onnx"
        if not onnx_path.is_file():
            export_checkpoint(path, onnx_path, ExportConfig(dynamic=True))
    return ds.student_teacher(onnx_path, threads=torch.get_num_threads()), f"ldn-{sha}-ort8"


def _dataset(config: TrainConfig, exposures, group: distributed.LocalGroup, prepare: Callable[[int, int, str], None],
             cache_dir: str | None = None) -> tuple[Any, int]:
    """The dataset of ``config.kind``, and (LDN) how many exposures' teacher targets this process computed."""
    common = dict(crop=config.crop, samples_per_epoch=config.samples_per_epoch, seed=config.seed, augment=config.augment)
    if config.kind == "bsn":
        return ds.BSNDataset(exposures, tfp_window=config.tfp_window, **common), 0
    if config.kind == "sr":
        return ds.SRDataset(exposures, **common), 0
    teacher, computed = _teacher_targets(config, exposures, group, prepare, cache_dir)
    dataset = ds.LDNDataset(exposures, teacher, timestamps=config.timestamps, progress=prepare,
                            reblur_timestamps=config.reblur_count, **common)
    return dataset, computed


def _teacher_targets(config: TrainConfig, exposures, group: distributed.LocalGroup,
                     prepare: Callable[[int, int, str], None], cache_dir: str | None) -> tuple[ds.TeacherFn, int]:
    """The teacher the LDN dataset reads, and how many exposures' targets this process computes for it.

    With a cache folder, each process computes and writes its shard of the cache files, all wait for each
    other, then every process reads the union (one process: the whole set). Without one (one process
    only), the dataset calls the teacher for every exposure itself.
    """
    teacher = _teacher_fn(config, group.device, cache_dir)
    if cache_dir is None:
        return teacher, len(exposures)
    work = [(exposure, ds.teacher_centers(exposure.window, config.timestamps, config.reblur_count))
            for exposure in exposures]
    computed = teacher.fill(work, group.place.rank, group.world_size,
                            progress=lambda done, total, what: prepare(done, total, "computing " + what))
    group.barrier()  # every shard written: the union is complete where every rank sees the same folder
    missing = teacher.missing(work)
    missing_anywhere = int(group.sum([len(missing)])[0])
    if missing_anywhere:  # every rank stops here, none waits for the others at the next collective
        raise ConfigError(f"{missing_anywhere} teacher-target file(s) missing from {cache_dir} after every process "
                          f"computed its share ({len(missing)} on rank {group.place.rank}): {ds.SHARED_CACHE_HINT}")
    return teacher.reader(), computed


def batch_loss(kind: str, model, batch, device, weights: LdnLossWeights,
               autocast: str = "off", reblur_gradient: str = "all") -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one batch; the forward pass runs at ``autocast`` precision, the loss in float32.

    LDN with more re-blur than distilled timestamps: ``reblur_gradient`` "all" back-propagates through
    every frame; "distilled" computes the re-blur-only frames without a gradient (they still count in the
    re-blurred mean; its gradient reaches the weights through the distilled frames only).
    """
    if kind == "bsn":
        tfp_short = batch.to(device)
        with autocast_context(device, autocast):
            denoised = model(tfp_short)
        return bsn_loss(denoised.float(), tfp_short), {}
    if kind == "sr":
        tfp_long, gray_blurry = (t.to(device) for t in batch)
        with autocast_context(device, autocast):
            super_resolved = model(tfp_long)
        return sr_loss(super_resolved.float(), gray_blurry), {}
    blurry, spikes, targets, gain = (t.to(device) for t in batch)
    count = spikes.shape[1]
    tracked = distilled_positions(count, targets.shape[1]) if reblur_gradient == "distilled" else list(range(count))
    untracked = sorted(set(range(count)) - set(tracked))
    with autocast_context(device, autocast):
        frames = _student_frames(model, blurry, spikes[:, tracked] if untracked else spikes, gain)
        if untracked:  # re-blur-only timestamps: in the re-blurred mean, without a gradient (a third of the cost)
            with torch.no_grad():
                rest = _student_frames(model, blurry, spikes[:, untracked], gain)
            order = torch.tensor(tracked + untracked, device=frames.device).argsort()
            frames = torch.cat([frames, rest], dim=1)[:, order]
    return ldn_loss(frames, targets, blurry, weights)


def _student_frames(model, blurry: torch.Tensor, spikes: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """The student at every timestamp of each crop: blurry (B, 3, H, W), spikes (B, T, 21, h, w), the
    firing gain of each crop's exposure (B,) -> float32 frames (B, T, 3, H, W)."""
    n, count = spikes.shape[:2]
    frames = model(blurry.repeat_interleave(count, dim=0), spikes.reshape(n * count, *spikes.shape[2:]).to(blurry.dtype),
                   gain.float().repeat_interleave(count, dim=0))
    return frames.float().reshape(n, count, *blurry.shape[1:])


# -- the loop ------------------------------------------------------------------------------------------------
def train(
    data: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    config: TrainConfig,
    *,
    resume: str | os.PathLike | None = None,
    network_config=None,
    options: RunOptions = RunOptions(),
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train ``config.kind`` on the recordings ``data`` and write the checkpoint ``out`` after every epoch.

    ``resume``: a checkpoint written by this function; its saved arguments apply except where ``config``
    sets a field explicitly (e.g. more ``epochs``), its weights, progress and optimizer state continue.
    ``network_config``: the network's config (dataclass or dict) for a fresh run; default the paper's.
    ``init`` (in ``config``): start from that checkpoint's weights (fine-tuning; same kind of network).
    ``options.distributed``: this process is one rank of a torchrun launch (``training.distributed``);
    every rank calls ``train`` with the same arguments, rank 0 writes ``out`` and calls ``progress``.
    """
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    if options.distributed:
        group = distributed.join(options.device)
    else:
        group = distributed.LocalGroup(resolve_device(options.device))
    try:
        return _train(group, data, out, config, resume, network_config, options, progress)
    finally:
        group.close()


def _train(group: distributed.LocalGroup, data, out, config: TrainConfig, resume, network_config,
           options: RunOptions, progress: ProgressFn | None) -> TrainResult:
    from spikereveal.engines.checkpoint import load_checkpoint, save_checkpoint, sha256_of

    started = time.monotonic()
    init_provenance = None
    kind = config.kind
    device = group.device
    emit = progress if progress is not None and group.is_main else (lambda event: None)

    history: list[dict[str, Any]] = []
    epochs_completed = step_in_epoch = 0
    elapsed_before = 0.0
    optimizer_state = None
    if resume is not None:
        model, meta = load_checkpoint(resume, expected_kind=kind)
        saved = (meta.get("training") or {})
        if "config" not in saved:
            raise ConfigError(
                f"{resume} holds no training state (it was not written by 'spikereveal train'); "
                f"use it with --init to fine-tune instead of --resume"
            )
        config = replace(config, init=None).over(TrainConfig.from_dict(saved["config"]))
        init_provenance = saved.get("init")
        epochs_completed = int(saved.get("epochs_completed", 0))
        step_in_epoch = int(saved.get("step_in_epoch", 0))
        history = [dict(entry) for entry in saved.get("history", [])]
        elapsed_before = float(saved.get("elapsed_s", 0.0))
        optimizer_state = _read_optimizer_state(resume, saved)
    else:
        config = config.with_defaults()
        if config.init is not None:
            init_path = config.init
            if kind == "ldn":
                from spikereveal.engines.export import resolve_model_path

                init_path = resolve_model_path(config.init, "--init")  # a shipped model's name ("default") or a path
            model, init_meta = load_checkpoint(init_path, expected_kind=kind)
            init_provenance = {"path": os.fspath(init_path), "sha256": sha256_of(init_path),
                               "source": init_meta.get("source", ""),
                               "init": (init_meta.get("training") or {}).get("init"),
                               "firing_gain_range": (init_meta.get("training") or {}).get("firing_gain_range")}
            if kind == "ldn" and config.variant is not None and model.config.variant != config.variant:
                torch.manual_seed(config.seed)
                source = model
                model = _new_model(kind, replace(source.config, variant=config.variant))
                init_provenance["warm_start"] = warm_start(model, source)
                init_provenance["variant"] = source.config.variant
                log.info("warm start of the %s LDN from the %s one: %d tensors copied", config.variant,
                         source.config.variant, len(init_provenance["warm_start"]))
        else:
            torch.manual_seed(config.seed)
            if kind == "ldn" and network_config is None:
                network_config = {name: getattr(config, name) for name in NETWORK_FIELDS
                                  if getattr(config, name) is not None}
            model = _new_model(kind, network_config)
        changes = {name: getattr(config, name) for name in ("spike_norm", "colour_anchor")
                   if kind == "ldn" and getattr(config, name) not in (None, getattr(model.config, name))}
        if changes:  # an --init checkpoint's weights read with another spike input or colour anchor
            model = _with_network_config(model, **changes)
    config = config.with_defaults()
    if config.batch_size % group.world_size:
        raise ConfigError(
            f"the batch of {config.batch_size} crops per step is split over {group.world_size} processes: use a "
            f"--batch-size that is a multiple of {group.world_size} (it stays the crops per optimiser step)"
        )
    ds.cpu_channels_last(model.to(device)).train()
    net = group.wrap(model)  # DistributedDataParallel under torchrun, the model itself in one process

    prepare = lambda done, total, what: emit(  # noqa: E731
        TrainProgress("prepare", kind, epochs_completed, config.epochs, done, total, message=what)
    )
    margin = max(ds.DEFAULT_MARGIN_FRAMES, config.tfp_window // 2)
    exposures = ds.load_exposures(data, k=config.timestamps, margin_frames=margin, progress=prepare)
    if config.samples_per_epoch is None:
        config = replace(config, samples_per_epoch=config.crops_per_exposure * len(exposures))
    cache_dir = options.cache_dir
    if kind == "ldn" and cache_dir is None and group.world_size > 1:  # the ranks share targets through files
        cache_dir = os.fspath(out) + ".teacher-cache"
        log.info("teacher targets shared through %s (pass --cache-dir to choose the folder)", cache_dir)
    targets_started, targets_cpu_started = time.monotonic(), time.process_time()
    dataset, computed = _dataset(config, exposures, group, prepare, cache_dir)
    teacher_targets = None
    if kind == "ldn":
        seconds = group.gather(time.monotonic() - targets_started)  # each rank: its shard, the wait, the reads
        cpu_seconds = group.gather(time.process_time() - targets_cpu_started)  # this process's CPU time, all threads
        teacher_targets = {"seconds": max(seconds), "seconds_per_rank": [round(t, 3) for t in seconds],
                           "cpu_seconds_per_rank": [round(t, 3) for t in cpu_seconds],
                           "computed_per_rank": [int(n) for n in group.gather(computed)],
                           "cache_dir": cache_dir}
    steps_per_epoch = math.ceil(len(dataset) / config.batch_size)

    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    weights = LdnLossWeights(config.lambda_teacher, config.lambda_reblur,
                             ssim=config.lambda_ssim, reblur_rule=config.reblur_rule)
    limit_s = None if options.time_limit_min is None else 60.0 * options.time_limit_min
    data_paths = [os.fspath(path) for path in data]

    def save(stopped_early: str | None) -> None:
        finished = epochs_completed >= config.epochs
        training = {
            "config": config.to_dict(),
            "epochs_completed": epochs_completed,
            "step_in_epoch": step_in_epoch,
            "finished": finished,
            "stopped_early": stopped_early,
            "history": history,
            "elapsed_s": elapsed_before + time.monotonic() - started,
            "data": data_paths,
            "exposures": len(exposures),
            "schedule": "Adam, cosine learning rate stepped per epoch",
            "device": str(device),
            "threads": torch.get_num_threads(),  # per process
            "world_size": group.world_size,
            "backend": group.backend,
            "init": init_provenance,  # the checkpoint fine-tuned from (its hash and its own provenance), or None
        }
        if kind == "ldn":  # the sensors it saw: the out-of-domain alarm of eval/deblur/serve (kernels.sensor)
            seen = [float(dataset.gains.min()), float(dataset.gains.max())]
            if init_provenance and init_provenance.get("firing_gain_range"):  # fine-tuned: it also saw the init's
                seen = [min(seen[0], init_provenance["firing_gain_range"][0]),
                        max(seen[1], init_provenance["firing_gain_range"][1])]
            training["firing_gain_range"] = [round(g, 4) for g in seen]
            training["teacher_targets"] = teacher_targets
        save_checkpoint(out, kind, model, model.config, training=training, source=f"spikereveal train {kind}")
        torch.save(
            {"optimizer": optimizer.state_dict(), "epochs_completed": epochs_completed, "step_in_epoch": step_in_epoch},
            optimizer_state_path(out),
        )

    stopped_early = None
    interrupted = threading.Event()  # Ctrl-C while training: finish the current step, save, then re-raise
    restore_interrupt = _defer_interrupt(interrupted)
    try:
        while epochs_completed < config.epochs and stopped_early is None:
            epoch = epochs_completed
            lr = cosine_lr(config.lr, epoch, config.epochs)
            for param_group in optimizer.param_groups:
                param_group["lr"] = lr
            dataset.set_epoch(epoch)
            # this process's share of every global batch left in the epoch (all of it in one process)
            plan = distributed.rank_batches(step_in_epoch * config.batch_size, len(dataset), config.batch_size,
                                            group.place.rank, group.world_size)
            loader = DataLoader(dataset, batch_sampler=[indices for indices, _ in plan], num_workers=options.num_workers)
            sums: dict[str, float] = {}
            counted = 0
            epoch_started = time.monotonic()
            for batch, (_, weight) in zip(loader, plan):
                loss, parts = batch_loss(kind, net, batch, device, weights, config.autocast, config.reblur_gradient)
                names = sorted(parts)
                share = weight / group.world_size  # the whole batch's mean = the sum of the shares
                totals = group.sum([float(loss.detach()) * share] + [parts[name] * share for name in names])
                if not math.isfinite(totals[0]):
                    raise ConfigError(
                        f"the {kind} loss became {totals[0]} at epoch {epoch + 1}, step {step_in_epoch + 1}; "
                        f"lower the learning rate (--lr)"
                    )
                optimizer.zero_grad(set_to_none=True)
                (loss if weight == 1.0 else loss * weight).backward()  # DDP averages the ranks' gradients
                optimizer.step()
                step_in_epoch += 1
                counted += 1
                for name, value in {"loss": totals[0], **dict(zip(names, totals[1:]))}.items():
                    sums[name] = sums.get(name, 0.0) + value
                running = {name: value / counted for name, value in sums.items()}
                elapsed = elapsed_before + time.monotonic() - started
                emit(TrainProgress("step", kind, epoch, config.epochs, step_in_epoch, steps_per_epoch, running, lr, elapsed))
                stop_interrupted, stop_time = _stop_requests(group, interrupted, limit_s, started)
                if stop_interrupted and step_in_epoch < steps_per_epoch:
                    stopped_early = "interrupted"
                    break
                if stop_time and step_in_epoch < steps_per_epoch:
                    stopped_early = "time limit"
                    break
            running = {name: value / max(counted, 1) for name, value in sums.items()}
            if stopped_early is None:
                history.append({"epoch": epoch + 1, "lr": lr, "seconds": time.monotonic() - epoch_started, **running})
                epochs_completed += 1
                step_in_epoch = 0
                stop_interrupted, stop_time = _stop_requests(group, interrupted, limit_s, started)
                if stop_interrupted and epochs_completed < config.epochs:
                    stopped_early = "interrupted"
                elif stop_time and epochs_completed < config.epochs:
                    stopped_early = "time limit"
            if group.is_main:
                save(stopped_early)
            emit(TrainProgress("epoch", kind, epoch, config.epochs, step_in_epoch or steps_per_epoch, steps_per_epoch,
                               running, lr, elapsed_before + time.monotonic() - started))
    finally:
        restore_interrupt()
    if group.is_main and epochs_completed >= config.epochs and not Path(out).is_file():
        save(None)  # resumed a finished run: still leave a checkpoint at ``out``
    group.barrier()  # every rank returns once the checkpoint is written
    if stopped_early == "interrupted":  # the checkpoint holds every finished step: --resume continues from it
        raise KeyboardInterrupt
    model.eval()
    return TrainResult(
        checkpoint=Path(out),
        epochs_completed=epochs_completed,
        step_in_epoch=step_in_epoch,
        finished=epochs_completed >= config.epochs,
        stopped_early=stopped_early,
        history=tuple(history),
        elapsed_s=elapsed_before + time.monotonic() - started,
        rank=group.place.rank,
        world_size=group.world_size,
        teacher_targets_s=None if teacher_targets is None else teacher_targets["seconds"],
    )


def _stop_requests(group: distributed.LocalGroup, interrupted: threading.Event, limit_s: float | None,
                   started: float) -> tuple[bool, bool]:
    """(Ctrl-C seen, time limit reached) on any rank: every rank stops after the same step."""
    out_of_time = limit_s is not None and time.monotonic() - started >= limit_s
    seen = group.sum([interrupted.is_set(), out_of_time])
    return seen[0] > 0, seen[1] > 0


def _defer_interrupt(flag: threading.Event) -> Callable[[], None]:
    """Until the returned function is called, a first Ctrl-C (SIGINT) only sets ``flag`` (the loop then stops
    after its current step and saves a checkpoint); a second one interrupts at once. Outside the main thread
    (where signals cannot be handled) nothing changes. Returns the function that restores the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if flag.is_set():
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        flag.set()
        log.warning("interrupted: stopping after this step and saving a checkpoint (Ctrl-C again to stop at once)")

    signal.signal(signal.SIGINT, handler)
    return lambda: signal.signal(signal.SIGINT, previous)


def _read_optimizer_state(checkpoint, saved: Mapping[str, Any]):
    """The optimizer moments saved beside ``checkpoint``, if they belong to the same point of the run."""
    path = optimizer_state_path(checkpoint)
    if not path.is_file():
        log.warning("%s not found: resuming with fresh Adam moments", path)
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    same_point = (
        state.get("epochs_completed") == saved.get("epochs_completed")
        and state.get("step_in_epoch") == saved.get("step_in_epoch")
    )
    if not same_point:
        log.warning("%s belongs to another point of the run: resuming with fresh Adam moments", path)
        return None
    return state["optimizer"]


__all__ = [
    "KINDS",
    "KIND_DEFAULTS",
    "RunOptions",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "cosine_lr",
    "optimizer_state_path",
    "resolve_device",
    "train",
]
