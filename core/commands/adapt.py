"""``spikereveal adapt``: fine-tune the teacher nets and the student on a rig's own recordings (no ground truth)."""

from __future__ import annotations

import argparse
from pathlib import Path

from spikereveal.commands._progress import train_progress_bars
from spikereveal.commands._types import output_dir, positive_int
from spikereveal.errors import require


def _three_epochs(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BSN,SR,LDN epochs such as 1,1,2, got {text!r}") from None
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected three epochs >= 1 such as 1,1,2, got {text!r}")
    return values  # type: ignore[return-value]


def register(subparsers) -> None:
    from spikereveal.training.adapt import (  # torch-free
        DEFAULT_DISTIL_FROM,
        DEFAULT_HOLDOUT_EVERY,
        DEFAULT_SYNTHETIC,
        DEFAULT_SYNTHETIC_EXPOSURES,
        DEFAULT_TEACHER_NETS,
        DEFAULT_TIME_BUDGET_MIN,
        DISTIL_SOURCES,
        TEACHER_NETS,
        MIN_TIME_BUDGET_MIN,
        STAGE_SHARES,
        SYNTHETIC,
    )
    from spikereveal.training.train_config import AUTOCAST_CHOICES

    shares = ", ".join(f"{kind} {share * 100:.0f}%%" for kind, share in STAGE_SHARES.items())  # argparse: %%
    parser = subparsers.add_parser(
        "adapt",
        help="fine-tune the student (and optionally the teacher nets) on your rig's recordings (no ground truth "
             "needed)",
        description="Fine-tune the student on the rig's own recordings, self-supervised, within a time budget "
                    "(with --teacher-nets fine-tune, the shipped teacher's BSN and SR first), beside simulated "
                    "recordings on a sensor like the rig's (--synthetic matched); hold out every N-th "
                    "exposure and report ground-truth-free indicators (re-blur PSNR, agreement with the teacher, "
                    "firing gain) on them before and after (plus PSNR/SSIM where gt.csv exists). Writes DIR/ldn.pt, "
                    "ldn.onnx (for deblur --onnx and serve), report.json and report.md (and bsn.pt, sr.pt when "
                    "the teacher is fine-tuned). Re-running the same command continues an interrupted run.",
    )
    parser.add_argument("--data", nargs="+", type=Path, required=True, metavar="REC",
                        help="the rig's recording directories (gt.csv is not needed)")
    parser.add_argument("--out", type=output_dir, required=True, metavar="DIR", help="output directory (resumable)")
    parser.add_argument("--time-budget-min", type=float, default=DEFAULT_TIME_BUDGET_MIN, metavar="M",
                        help=f"wall-clock budget of the training in minutes (default {DEFAULT_TIME_BUDGET_MIN:g}, at "
                             f"least {MIN_TIME_BUDGET_MIN:g}): {shares} (the student's share includes its teacher "
                             f"targets; a stage that does not run, such as the teacher's with --teacher-nets keep, "
                             f"gives its share to the student), the rest for export and report; epochs are sized "
                             f"from the first one")
    parser.add_argument("--model", type=Path, metavar="CKPT", help="student LDN to start from (default: shipped)")
    parser.add_argument("--teacher-bsn", type=Path, metavar="CKPT", help="teacher BSN to start from (default: shipped)")
    parser.add_argument("--teacher-sr", type=Path, metavar="CKPT", help="teacher SR to start from (default: shipped)")
    parser.add_argument("--holdout-every", type=positive_int, default=DEFAULT_HOLDOUT_EVERY, metavar="N",
                        help=f"hold out every N-th usable exposure (at least one) to measure the result "
                             f"(default {DEFAULT_HOLDOUT_EVERY})")
    parser.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda (default cpu)")
    parser.add_argument("--autocast", choices=AUTOCAST_CHOICES, default="off",
                        help="bf16: forward passes and teacher targets in bfloat16 (2-3x faster on CPUs with "
                             "AVX512-BF16/AMX); default off")
    parser.add_argument("--distil-from", choices=DISTIL_SOURCES, default=DEFAULT_DISTIL_FROM,
                        help=f"the student's targets: the teacher cascade alone (teacher, the paper's; fine-tuned or "
                             f"kept, see --teacher-nets) or the mean of its frames and the starting student's "
                             f"(teacher+student); default "
                             f"{DEFAULT_DISTIL_FROM}")
    parser.add_argument("--teacher-nets", choices=TEACHER_NETS, default=DEFAULT_TEACHER_NETS,
                        help=f"fine-tune the teacher's BSN and SR on the rig first (fine-tune, the paper's) or keep "
                             f"the starting ones and give their budget to the student (keep); default "
                             f"{DEFAULT_TEACHER_NETS}")
    parser.add_argument("--synthetic", choices=SYNTHETIC, default=DEFAULT_SYNTHETIC,
                        help=f"matched: also train the student on simulated recordings (their ground truth as its "
                             f"targets) whose sensor threshold matches the rig's measured firing gain and whose "
                             f"geometry, clock and exposure length are the rig's; off: the rig's recordings only; "
                             f"default {DEFAULT_SYNTHETIC}")
    parser.add_argument("--synthetic-exposures", type=positive_int, default=DEFAULT_SYNTHETIC_EXPOSURES, metavar="N",
                        help=f"simulated exposures to write, 8 per recording, fewer when the stage's budget is "
                             f"spent (default {DEFAULT_SYNTHETIC_EXPOSURES})")
    parser.add_argument("--force", action="store_true",
                        help="start over in DIR even if it holds an adaptation with other arguments")
    parser.add_argument("--epochs", type=_three_epochs, default=None, help=argparse.SUPPRESS)  # BSN,SR,LDN: tests
    parser.set_defaults(func=run)


def _progress_printer(tqdm):
    """A progress callback: a line per stage event, and ``train``'s bars (one per preparation step and epoch)."""
    draw, close_all = train_progress_bars(tqdm, leave=False)

    def progress(event) -> None:
        head = f"[{event.index}/{event.stages}] {event.stage}"
        if event.status != "train":
            close_all()
            if event.status in ("start", "skip", "progress", "done") and (event.message or event.status != "done"):
                tqdm.write(f"{head}: {event.status}" + (f" ({event.message})" if event.message else ""))
            return
        draw(event.train, head)

    return progress, close_all


def run(args) -> int:
    from spikereveal.training.adapt import AdaptConfig, adapt, format_report  # torch-free

    config = AdaptConfig(
        data=tuple(str(p) for p in args.data), out=str(args.out), time_budget_min=args.time_budget_min,
        model=None if args.model is None else str(args.model),
        teacher_bsn=None if args.teacher_bsn is None else str(args.teacher_bsn),
        teacher_sr=None if args.teacher_sr is None else str(args.teacher_sr),
        holdout_every=args.holdout_every, threads=args.threads, device=args.device, autocast=args.autocast,
        stage_epochs=args.epochs, distil_from=args.distil_from,
        teacher_nets=args.teacher_nets, synthetic=args.synthetic, synthetic_exposures=args.synthetic_exposures,
        force=args.force,
    )
    require("torch", "spikereveal adapt (training)", "train")
    from tqdm import tqdm

    progress, close_all = _progress_printer(tqdm)
    try:
        result = adapt(config, progress=progress)
    except KeyboardInterrupt:
        close_all()
        print(f"interrupted: every finished training step is kept in {args.out}; re-run the same command to continue")
        raise
    finally:
        close_all()
    print(format_report(result.report), end="")
    if result.skipped:
        print(f"skipped (done by an earlier run): {', '.join(result.skipped)}")
    print(f"wrote {result.out}: ldn.pt, ldn.onnx (use it with deblur --onnx or serve), "
          f"report.json, report.md")
    return 0
