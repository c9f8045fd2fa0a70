"""``spikereveal demo``: simulator -> replay -> serve on loopback in one command."""

from __future__ import annotations

from spikereveal.commands._types import output_dir_text, speed_factor
from spikereveal.commands.simulate import PRESET_HELP, PRESET_NAMES


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the whole live pipeline on this machine: simulate a rig, replay it, serve it, write a video",
        description=(
            "Simulate a small hybrid-rig recording, replay it as a live rig over loopback ZeroMQ into 'serve' "
            "(ONNX Runtime, the shipped model), and write OUT/demo.mp4 (blurry | sharp sequence), OUT/frames/, "
            "OUT/frames.csv and OUT/demo.json (counters and latency: end to end, inference, everything else)."
        ),
    )
    parser.add_argument("--out", type=output_dir_text, default="spikereveal-demo", metavar="DIR",
                        help="output folder (default spikereveal-demo)")
    parser.add_argument("--exposures", type=int, default=6, metavar="N", help="exposures to simulate (default 6)")
    parser.add_argument("--engine", choices=("ort", "torch", "trt"), default="ort",
                        help="inference engine (default ort)")
    parser.add_argument("--model", metavar="CKPT", default=None, help="LDN checkpoint or a shipped model's name: default, lite (default: default)")
    parser.add_argument("--preset", choices=PRESET_NAMES, default="gopro",
                        help=f"simulator preset (default gopro: about 30 s on 2 CPU cores). {PRESET_HELP}")
    parser.add_argument("--speed", type=speed_factor, default=1.0, metavar="X", help="replay speed, x real time (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="inference threads (default: cores - 1)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from tqdm import tqdm

    from spikereveal.commands.serve import format_counters
    from spikereveal.demo import DEMO_FILE, DemoConfig, run_demo

    config = DemoConfig(preset=args.preset, exposures=args.exposures, seed=args.seed, speed=args.speed,
                        engine=args.engine, model=args.model, threads=args.threads)
    bars: list = []

    def published(done: int, total: int) -> None:  # streaming: a bar of the exposures deblurred so far
        if not bars:
            bars.append(tqdm(total=total, desc="demo: sharp exposures published", unit="exposure"))
        bars[0].n = done
        bars[0].refresh()

    try:
        summary = run_demo(args.out, config, progress=lambda message: tqdm.write(f"demo: {message} ..."),
                           exposure_progress=published)
    finally:
        for bar in bars:
            bar.close()
    print(format_counters(summary["serve"]))
    seconds = summary["seconds"]
    print(f"demo: done in {seconds['total']:.1f} s (simulate {seconds['simulate']:.1f} s, engine "
          f"{seconds['engine_load']:.1f} s, stream + inference {seconds['stream_and_infer']:.1f} s)")
    video = f"{args.out}/{summary['video']}" if summary["video"] else "no video (OpenCV has no mp4v encoder)"
    plots = [f"{args.out}/{name}" for name in summary["plots"].values()]
    print(f"demo: wrote {video}, {args.out}/frames/, {args.out}/frames.csv, {args.out}/{DEMO_FILE}"
          + (f", latency plots {', '.join(plots)}" if plots else ", no latency plots (install spikereveal[plot])"))
    return 0
