"""``spikereveal import-weights PATH --out CKPT``: the official S-SDM LDN weights as our checkpoint."""

from __future__ import annotations

from pathlib import Path

from spikereveal.commands._types import output_file
from spikereveal.errors import ConfigError, require


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "import-weights",
        help="convert the official S-SDM LDN state dict into a spikereveal checkpoint",
        description="Load the official S-SDM LDN weights (a PyTorch state dict; BGR images in [0,1]) into "
                    "spikereveal's LDN, check every tensor name and shape, and write a checkpoint of kind "
                    "'ldn'. Anything else is refused with the mismatching tensors named.",
    )
    parser.add_argument("path", type=Path, help="official weights, e.g. DeblurNet_100.pth")
    parser.add_argument("--out", type=output_file, required=True, help="checkpoint to write")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.set_defaults(func=run)


def run(args) -> int:
    require("torch", "spikereveal import-weights (reading PyTorch weights)", "train")
    from spikereveal.engines.checkpoint import import_official_ldn

    if args.out.exists() and not args.force:
        raise ConfigError(f"{args.out} exists; pass --force to overwrite it")
    meta = import_official_ldn(args.path, args.out)
    print(f"wrote {meta['path']}: kind ldn, {meta['parameters']:,} parameters, "
          f"{meta['config']['spike_frames']} spike frames; {meta['source']}")
    return 0
