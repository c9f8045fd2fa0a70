"""``spikereveal interpolate-weights START END --alpha A --out CKPT``: WiSE-FT weight-space interpolation."""

from __future__ import annotations

from pathlib import Path

from spikereveal.commands._types import output_file
from spikereveal.errors import ConfigError, require
from spikereveal.kernels.images import COLOUR_ANCHORS


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "interpolate-weights",
        help="blend two checkpoints of one network, (1 - alpha) x START + alpha x END (WiSE-FT)",
        description="Write a checkpoint whose every tensor is (1 - alpha) x START + alpha x END: a network and its "
                    "fine-tuned self (e.g. the imported official weights and a student fine-tuned from them), "
                    "interpolated in weight space to keep part of the start's robustness (WiSE-FT). Both must be "
                    "checkpoints of the same network (tensor names and shapes); the result takes END's config "
                    "and training record and records alpha and both files' sha256. Choose alpha on validation "
                    "recordings (spikereveal eval), not on the ones you report.",
    )
    parser.add_argument("start", help="checkpoint at alpha 0 (e.g. official.ckpt from import-weights), or a "
                                      "shipped student's name (default, lite)")
    parser.add_argument("end", help="checkpoint at alpha 1 (e.g. a student fine-tuned from START), or a shipped "
                                    "student's name")
    parser.add_argument("--alpha", type=float, required=True, help="weight of END, in [0, 1]")
    parser.add_argument("--out", type=output_file, required=True, help="checkpoint to write")
    parser.add_argument("--colour-anchor", choices=COLOUR_ANCHORS,
                        help="students only: the result's colour anchor, none or exposure-mean (each channel of an "
                             "exposure's frames shifted so their mean is the blurry frame's; see 'train ldn "
                             "--colour-anchor'); default: END's")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.set_defaults(func=run)


def _checkpoint(text: str) -> Path:
    from spikereveal.engines.export import SHIPPED_MODELS, resolve_model_path

    if text in SHIPPED_MODELS and not Path(text).is_file():
        return resolve_model_path(text)
    path = Path(text)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist; pass a spikereveal checkpoint (from train, adapt or "
                          f"import-weights) or a shipped student's name ({', '.join(SHIPPED_MODELS)})")
    return path


def run(args) -> int:
    require("torch", "spikereveal interpolate-weights (reading PyTorch weights)", "train")
    from spikereveal.engines.checkpoint import interpolate_checkpoints
    from spikereveal.training import bsn, sr

    del bsn, sr  # imported for what importing does: it registers the teacher nets' checkpoint kinds (they blend too)

    if args.out.exists() and not args.force:
        raise ConfigError(f"{args.out} exists; pass --force to overwrite it")
    start, end = _checkpoint(args.start), _checkpoint(args.end)
    meta = interpolate_checkpoints(start, end, args.alpha, args.out, colour_anchor=args.colour_anchor)
    print(f"wrote {meta['path']}: kind {meta['kind']}, {meta['parameters']:,} parameters; {meta['source']}")
    return 0
