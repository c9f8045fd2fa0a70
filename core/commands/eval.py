"""``spikereveal eval``: PSNR/SSIM of blurry input, plain SDM, teacher and student against ``gt.csv``."""

from __future__ import annotations

import json
from pathlib import Path

from spikereveal.commands._types import add_k_argument, output_dir, output_file
from spikereveal.errors import ConfigError, require

def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="PSNR/SSIM against ground truth (gt.csv) for blurry input, SDM, teacher and student",
        description="Score every method against every ground-truth frame of simulated recordings (and the "
                    "frame nearest each exposure's centre), write a JSON report, print a table and "
                    "optionally one PNG grid per exposure. SSIM: gaussian window 11 (sigma 1.5), data range 1.",
    )
    parser.add_argument("--data", nargs="+", type=Path, required=True, metavar="REC",
                        help="recording directories with gt.csv")
    parser.add_argument("--model", type=Path, metavar="CKPT",
                        help="student LDN checkpoint, or a shipped model's name: default, lite (default: default)")
    parser.add_argument("--no-student", action="store_true", help="score only blurry, SDM and teacher")
    parser.add_argument("--teacher-bsn", type=Path, metavar="CKPT", help="teacher BSN checkpoint (default: shipped)")
    parser.add_argument("--teacher-sr", type=Path, metavar="CKPT", help="teacher SR checkpoint (default: shipped)")
    parser.add_argument("--no-teacher", action="store_true", help="do not score the network teacher")
    parser.add_argument("--json", type=output_file, required=True, metavar="PATH", help="report to write")
    parser.add_argument("--plot", type=output_dir, metavar="DIR", help="write one PNG grid per exposure into DIR")
    add_k_argument(parser, "student frames per exposure for the re-blur check")
    parser.add_argument("--device", default="cpu", help="torch device for the networks (default cpu)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch and the ort runner (default: cores - 1 for ort)")
    parser.add_argument("--engine", choices=("torch", "ort", "trt"), default="torch",
                        help="what runs the student: torch (the checkpoint in PyTorch, default) or an inference "
                             "runner on an ONNX export, with a fixed batch of --k windows")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                        help="ort/trt export precision (torch: fp32 only); int8 calibrates on the --data recordings")
    parser.add_argument("--onnx", type=Path, metavar="PATH",
                        help="ort/trt: run this static export (batch --k, the recordings' grid) instead of exporting "
                             "--model into <--json's folder>/onnx/ (cached while checkpoint and precision match)")
    parser.add_argument("--engine-cache", type=output_dir, metavar="DIR", help="trt: engine cache directory")
    calibration = parser.add_mutually_exclusive_group()
    calibration.add_argument("--calibration", type=Path, metavar="PATH",
                             help="rig calibration to apply to every recording (default: each recording's own "
                                  "calibration.json, if any)")
    calibration.add_argument("--no-calibration", action="store_true", help="apply no rig calibration")
    parser.set_defaults(func=run)


def _student(args, models: dict, stack):
    """The student function and the report's engine block (None, None with --no-student)."""
    if args.no_student:
        return None, None
    if args.engine != "torch":
        return _runner_student(args, models, stack)
    if args.precision != "fp32" or args.onnx is not None:
        raise ConfigError("the torch engine runs the checkpoint at fp32; use --engine ort (or trt) for --precision "
                          f"{args.precision} or --onnx")
    from spikereveal.engines.checkpoint import declared_gain_range, load_checkpoint
    from spikereveal.engines.export import resolve_model_path
    from spikereveal.training.evaluate import torch_student

    path = resolve_model_path(args.model)  # a checkpoint, a shipped model's name, or the shipped default
    model, meta = load_checkpoint(path, expected_kind="ldn")
    models["student"] = str(path)
    if meta.get("source"):
        models["student_source"] = str(meta["source"])
    gain_range = declared_gain_range(meta)
    engine = {"engine": "torch", "precision": "fp32", "device": args.device,
              "firing_gain_range": None if gain_range is None else list(gain_range)}
    return torch_student(model, args.device), engine


def _runner_student(args, models: dict, stack):
    from spikereveal.engines.choice import EngineChoice
    from spikereveal.engines.runners import RunnerOptions
    from spikereveal.training.evaluate import engine_student

    options = RunnerOptions(threads=args.threads, cache_dir=str(args.engine_cache) if args.engine_cache else None)
    choice = EngineChoice(engine=args.engine, precision=args.precision,
                          model=str(args.model) if args.model is not None else None,
                          onnx_path=str(args.onnx) if args.onnx is not None else None, options=options)
    student, engine = stack.enter_context(engine_student(choice, args.data, args.k, args.json.parent,
                                                         args.calibration, not args.no_calibration))
    if engine["checkpoint"] is not None:
        models["student"] = engine["checkpoint"]
    models["student_onnx"] = engine["onnx"]
    return student, engine


def _teacher(args, models: dict):
    if args.no_teacher:
        return None
    if (args.teacher_bsn is None) != (args.teacher_sr is None):
        raise ConfigError("the network teacher needs both --teacher-bsn and --teacher-sr (or neither: shipped ones)")
    from spikereveal.engines.export import shipped_teacher_path

    bsn_path = args.teacher_bsn or shipped_teacher_path("bsn")
    sr_path = args.teacher_sr or shipped_teacher_path("sr")
    if bsn_path is None or sr_path is None:
        return None  # no teacher nets given or shipped: blurry, SDM and student only
    from spikereveal.engines.checkpoint import load_checkpoint
    from spikereveal.training.datasets import network_teacher
    from spikereveal.training.train import resolve_device

    device = resolve_device(args.device)
    bsn, _ = load_checkpoint(bsn_path, expected_kind="bsn", map_location=device)
    sr, _ = load_checkpoint(sr_path, expected_kind="sr", map_location=device)
    models["teacher_bsn"], models["teacher_sr"] = str(bsn_path), str(sr_path)
    return network_teacher(bsn.eval(), sr.eval())


def run(args) -> int:
    from contextlib import ExitStack

    from tqdm import tqdm

    require("torch", "spikereveal eval (the teacher, SDM and student scoring)", "train")
    from spikereveal.training.evaluate import EvalOptions, evaluate, format_table

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    options = EvalOptions(k=args.k, plot_dir=None if args.plot is None else str(args.plot))
    models: dict[str, str] = {}
    with ExitStack() as stack:  # closes the student's runner
        student, engine = _student(args, models, stack)
        # the range the student declares it was trained for: the firing_gain block states it, not the engine's
        trained_gain_range = None if engine is None else engine.pop("firing_gain_range", None)
        teacher = _teacher(args, models)
        with tqdm(desc="eval", unit="exposure") as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            report = evaluate(args.data, student=student, teacher=teacher, options=options, progress=progress,
                              models=models, engine=engine, calibration_path=args.calibration,
                              use_calibration=not args.no_calibration, trained_gain_range=trained_gain_range)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(format_table(report))
    block = report["calibration"]
    for item in block["recordings"]:
        if item["path"] is not None:
            print(f"calibration {item['path']} applied to {item['recording']}: "
                  + (", ".join(item["applied"]) or "no section"))
    for item in report["firing_gain"]["recordings"]:
        if item["warning"] is not None:
            print(f"warning: {item['warning']}")
    print(f"wrote {args.json}" + (f" and {len(report['exposures'])} plot(s) in {args.plot}" if args.plot else ""))
    return 0
