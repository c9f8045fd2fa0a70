"""``spikereveal train bsn|sr|ldn``: self-supervised training of the teacher nets and the student."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from spikereveal.errors import ConfigError, require
from spikereveal.commands._progress import train_progress_bars
from spikereveal.commands._types import output_dir, output_file, positive_int
from spikereveal.training.train_config import (  # torch-free
    AUTOCAST_CHOICES, COLOUR_ANCHORS, GROUND_TRUTH_USES, LDN_VARIANTS, REBLUR_GRADIENTS, REBLUR_RULES, SPIKE_NORMS,
    TEACHERS)

_HELP = {
    "bsn": "the teacher's blind-spot denoiser: MSE(TFP_short, BSN(TFP_short))",
    "sr": "the teacher's x4 gray super-resolver: MSE(SR(TFP_long), gray(blurry))",
    "ldn": "the student: distillation from the teacher + 100 x re-blur MSE over 5 timestamps",
}


def _add_common(parser: argparse.ArgumentParser, kind: str) -> None:
    from spikereveal.training.train_config import COMMON_DEFAULTS, KIND_DEFAULTS  # torch-free

    defaults = {**COMMON_DEFAULTS, **KIND_DEFAULTS[kind]}
    parser.add_argument("--data", nargs="+", type=Path, required=True, metavar="REC",
                        help="recording directories to train on (no ground truth is used)")
    parser.add_argument("--out", type=output_file, required=True, metavar="CKPT",
                        help="checkpoint to write (after every epoch; the optimizer state goes to CKPT.optim)")
    parser.add_argument("--epochs", type=positive_int, help=f"epochs (default {defaults['epochs']})")
    parser.add_argument("--batch-size", type=positive_int, help=f"crops per step (default {defaults['batch_size']})")
    parser.add_argument("--crop", type=positive_int,
                        help=f"crop side in spike pixels; image crops are 4x (default {defaults['crop']})")
    parser.add_argument("--lr", type=float, help=f"Adam learning rate, cosine-annealed per epoch (default {defaults['lr']:g})")
    parser.add_argument("--seed", type=int, help=f"seed of the weights and of the crops (default {defaults['seed']})")
    parser.add_argument("--samples-per-epoch", type=positive_int,
                        help=f"crops per epoch (default {defaults['crops_per_exposure']} per usable exposure)")
    parser.add_argument("--no-augment", dest="augment", action="store_const", const=False, default=None,
                        help="no random flips of the crops")
    parser.add_argument("--init", type=Path, metavar="CKPT",
                        help=f"start from this {kind} checkpoint's weights (fine-tune, e.g. on the rig's own recordings)")
    parser.add_argument("--resume", type=Path, metavar="CKPT",
                        help="continue the run saved in CKPT (its arguments apply unless given here)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    parser.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--time-limit-min", type=float, metavar="M",
                        help="stop after M minutes (checkpoint saved; --resume continues)")
    parser.add_argument("--workers", type=int, default=0, help="data loader worker processes (default 0)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists (fresh runs)")
    parser.add_argument("--distributed", action="store_true",
                        help="data-parallel training, one process per rank: start with torchrun --nproc-per-node N "
                             "-m spikereveal train ... (implied when torchrun starts more than one process); "
                             "gloo on cpu, nccl with --device cuda (each rank on cuda:LOCAL_RANK); --batch-size "
                             "stays the crops per step, split over the processes")
    parser.add_argument("--autocast", choices=AUTOCAST_CHOICES,
                        help="precision of the forward passes: off (float32, default) or bf16 (mixed precision; "
                             "2-3x faster on CPUs with AVX512-BF16/AMX, weights stay float32)")
    parser.set_defaults(func=run, kind=kind)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the teacher's BSN / SR or the student LDN on recordings (self-supervised)",
        description="Self-supervised training (SPEC §3) on recordings; no ground truth is used. Train bsn and "
                    "sr first, then ldn with --teacher-bsn/--teacher-sr (or --teacher sdm).",
    )
    sub = parser.add_subparsers(dest="network", metavar="NETWORK")
    sub.required = True
    for kind in ("bsn", "sr", "ldn"):
        child = sub.add_parser(kind, help=_HELP[kind], description=f"Train {_HELP[kind]}.")
        _add_common(child, kind)
        if kind == "ldn":
            child.add_argument("--teacher", choices=TEACHERS,
                               help="teacher: the BSN+SR cascade (default when both nets are given), plain SDM, "
                                    "a trained student (ldn, with --teacher-ldn: distil a smaller variant from it), "
                                    "the mean of the cascade and that student (nets+ldn, with all three), or the "
                                    "recordings' own sharp frames (gt: simulated recordings with a gt.csv frame at "
                                    "each training timestamp, e.g. simulate --k 13 with --reblur-timestamps 13)")
            child.add_argument("--ground-truth", choices=GROUND_TRUTH_USES,
                               help="ignore (default): every recording is trained on the teacher's targets; "
                                    "where-recorded: recordings with gt.csv (simulated) on their own sharp frames "
                                    "and the others on the teacher's (e.g. simulated recordings beside a rig's own)")
            child.add_argument("--teacher-bsn", type=Path, metavar="CKPT", help="trained BSN checkpoint")
            child.add_argument("--teacher-sr", type=Path, metavar="CKPT", help="trained SR checkpoint")
            child.add_argument("--teacher-ldn", metavar="CKPT",
                               help="trained student checkpoint whose clipped frames are the targets (--teacher "
                                    "ldn), or a shipped model's name: default, lite")
            child.add_argument("--variant", choices=LDN_VARIANTS,
                               help="the student's architecture: paper (the released network) or lite (~7x fewer "
                                    "multiply-adds per frame); with --init of the other variant, its matching "
                                    "tensors (encoders, attention) are copied and the rest starts fresh "
                                    "(default: the --init model's, else paper)")
            child.add_argument("--cache-dir", type=output_dir, metavar="DIR",
                               help="keep the teacher's targets in DIR and reuse them in later runs (resume, "
                                    "other hyper-parameters): the network teacher is the expensive part")
            child.add_argument("--spike-norm", choices=SPIKE_NORMS,
                               help="how the student reads its spikes: none (raw 0/1 frames, the paper's) or "
                                    "firing-gain (divided by the exposure's firing gain, so a sensor with another "
                                    "threshold or gain looks the same; default: the --init model's, else none)")
            child.add_argument("--colour-anchor", choices=COLOUR_ANCHORS,
                               help="where the student runs on a whole exposure (eval, deblur, serve, the exports): "
                                    "none (its frames as they come) or exposure-mean (each channel shifted so the "
                                    "mean of the exposure's frames is the blurry frame's, which the blur formation "
                                    "fixes: no colour cast); not used by the training loss (default: the --init "
                                    "model's, else none)")
            child.add_argument("--timestamps", type=positive_int, help="timestamps per exposure in the loss (default 5)")
            child.add_argument("--reblur-timestamps", type=positive_int, metavar="N",
                               help="timestamps per exposure in the re-blur term, a finer set containing the "
                                    "distilled ones: N = M + j (M - 1), e.g. 9 or 13 for M = 5 (default: M). The "
                                    "student runs at all N; the teacher is only needed at the M")
            child.add_argument("--reblur-rule", choices=REBLUR_RULES,
                               help="how the re-blur term averages the N frames: mean (the paper's, default) or "
                                    "trapezoid (first and last frame weigh half, closer to the exposure's mean)")
            child.add_argument("--reblur-gradient", choices=REBLUR_GRADIENTS,
                               help="frames the re-blur term back-propagates through: all (default) or only the "
                                    "distilled ones (the other N - M then run without a gradient: cheaper)")
            child.add_argument("--lambda-teacher", type=float, help="weight of the distillation term (default 1)")
            child.add_argument("--lambda-reblur", type=float, help="weight of the re-blur term (default 100)")
            child.add_argument("--lambda-ssim", type=float,
                               help="weight of the SSIM term in the distance to the teacher, D = Charbonnier + "
                                    "w (1 - SSIM) (default 1; 0 = Charbonnier alone, the ablation)")
            child.add_argument("--teacher-autocast", choices=AUTOCAST_CHOICES,
                               help="precision of the teacher nets computing the targets (default off; bf16 "
                                    "halves their time on CPUs with AVX512-BF16)")


def _config(args):
    from spikereveal.training.train_config import TrainConfig

    values = dict(
        kind=args.kind, epochs=args.epochs, batch_size=args.batch_size, crop=args.crop, lr=args.lr, seed=args.seed,
        samples_per_epoch=args.samples_per_epoch, augment=args.augment, autocast=args.autocast,
        init=None if args.init is None else str(args.init),
    )
    if args.kind == "ldn":
        teacher = args.teacher
        if teacher is None and (args.teacher_bsn or args.teacher_sr):
            teacher = "nets"
        if teacher is None and args.teacher_ldn:
            teacher = "ldn"
        if teacher is None and args.resume is None:
            raise ConfigError(
                "train ldn needs a teacher: --teacher-bsn CKPT --teacher-sr CKPT (train them with "
                "'spikereveal train bsn' and 'spikereveal train sr'), --teacher-ldn CKPT (a trained student), "
                "or --teacher sdm for the plain SDM"
            )
        values.update(
            teacher=teacher,
            teacher_bsn=None if args.teacher_bsn is None else str(args.teacher_bsn),
            teacher_sr=None if args.teacher_sr is None else str(args.teacher_sr),
            teacher_ldn=args.teacher_ldn, variant=args.variant,
            timestamps=args.timestamps, lambda_teacher=args.lambda_teacher, lambda_reblur=args.lambda_reblur,
            lambda_ssim=args.lambda_ssim, teacher_autocast=args.teacher_autocast,
            reblur_timestamps=args.reblur_timestamps, reblur_rule=args.reblur_rule,
            reblur_gradient=args.reblur_gradient, spike_norm=args.spike_norm, ground_truth=args.ground_truth,
            colour_anchor=args.colour_anchor,
        )
    return TrainConfig(**values)


def run(args) -> int:
    from tqdm import tqdm

    require("torch", f"spikereveal train {args.kind} (training)", "train")
    from spikereveal.training.distributed import RankPlace, launched_by_torchrun
    from spikereveal.training.train import RunOptions, train

    distributed = args.distributed or launched_by_torchrun()
    main_rank = not distributed or RankPlace.from_environment().is_main
    if not main_rank:  # rank 0 reports; the others only say what goes wrong
        logging.getLogger().setLevel(logging.ERROR)
    # every rank checks before the ranks meet (train joins the group), so none sees rank 0's new checkpoint
    if args.resume is None and args.out.exists() and not args.force:
        raise ConfigError(f"{args.out} exists; pass --force to overwrite it, or --resume {args.out} to continue it")
    config = _config(args)
    options = RunOptions(device=args.device, threads=args.threads, time_limit_min=args.time_limit_min,
                         num_workers=args.workers, distributed=distributed,
                         cache_dir=None if getattr(args, "cache_dir", None) is None else str(args.cache_dir))
    progress, close_all = train_progress_bars(tqdm)

    try:
        result = train(args.data, args.out, config, resume=args.resume, options=options, progress=progress)
    finally:
        close_all()
    if result.rank != 0:
        return 0
    last = result.history[-1] if result.history else {}
    state = "finished" if result.finished else f"stopped early ({result.stopped_early})"
    loss = f", last epoch loss {last['loss']:.5g}" if "loss" in last else ""
    print(f"wrote {result.checkpoint}: {args.kind}, {result.epochs_completed} epoch(s) {state}{loss}, "
          f"{result.elapsed_s / 60:.1f} min")
    if result.teacher_targets_s is not None:
        print(f"teacher targets ready in {result.teacher_targets_s:.2f} s on {result.world_size} process(es)")
    if not result.finished:
        data = " ".join(str(path) for path in args.data)
        launcher = "spikereveal" if result.world_size == 1 else \
            f"torchrun --nproc-per-node {result.world_size} -m spikereveal"  # (or any count dividing the batch)
        print(f"continue with: {launcher} train {args.kind} --data {data} --out {result.checkpoint} "
              f"--resume {result.checkpoint}")
    return 0
