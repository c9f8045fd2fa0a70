"""One checkpoint format for the three networks (LDN student, BSN denoiser, SR super-resolver).

A checkpoint is a ``torch.save`` of a plain dict that ``torch.load(weights_only=True)`` can read::

    {"format": "spikereveal-checkpoint", "version": 1, "kind": "ldn" | "bsn" | "sr",
     "config": {...network config...}, "state_dict": {name: tensor},
     "training": {...training arguments...} or None,
     "software": {"torch": ..., "spikereveal": ..., "python": ...}, "source": "free text"}

The LDN's classes load lazily; the teacher networks (bsn, sr) register themselves (:func:`register_network`)
when ``spikereveal.training`` is imported, so this module never imports the training package.
Also here: reading the official S-SDM LDN state dict for ``spikereveal import-weights``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import platform
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

from spikereveal import __version__
from spikereveal.errors import ConfigError, FormatError, require

CHECKPOINT_FORMAT = "spikereveal-checkpoint"
CHECKPOINT_VERSION = 1
#: Keys under which training scripts commonly nest a state dict.
_STATE_DICT_WRAPPERS = ("state_dict", "model", "params", "params_ema", "net", "network", "model_state_dict")
#: Prefixes added by DataParallel / torch.compile / wrapper modules, stripped when every key has them.
_KEY_PREFIXES = ("module.", "_orig_mod.", "model.", "net.")


class CheckpointError(FormatError):
    """A file is not a usable spikereveal checkpoint (or official state dict) for the requested use."""


#: every kind a checkpoint can hold: the student (``ldn``, this package) and the teacher networks
#: (``bsn``, ``sr``), which live upstream in ``spikereveal.training`` and register themselves on import
CHECKPOINT_KINDS = ("ldn", "bsn", "sr")
_NETWORKS: dict[str, tuple[type, type]] = {}  # kind -> (config class, model class)


def register_network(kind: str, config_class: type, model_class: type) -> None:
    """Make checkpoints of ``kind`` loadable: ``config_class.from_dict(config)`` and ``model_class(config)``
    rebuild the network. The teacher networks call this when ``spikereveal.training`` is imported, so this
    module never imports the training package."""
    if kind not in CHECKPOINT_KINDS:
        raise ConfigError(f"unknown checkpoint kind {kind!r}; expected one of {list(CHECKPOINT_KINDS)}")
    _NETWORKS[kind] = (config_class, model_class)


def _torch():
    return require("torch", "reading and writing network checkpoints", "train")


def _kind_classes(kind: str):
    if kind not in CHECKPOINT_KINDS:
        raise ConfigError(f"unknown checkpoint kind {kind!r}; expected one of {list(CHECKPOINT_KINDS)}")
    if kind == "ldn" and kind not in _NETWORKS:
        from spikereveal.engines.ldn import LDN, LDNConfig  # torch, loaded on first use

        register_network("ldn", LDNConfig, LDN)
    if kind not in _NETWORKS:
        raise ConfigError(f"a {kind} checkpoint is a teacher network of spikereveal.training: import "
                          f"spikereveal.training.{kind} (the 'train' extra) before loading it")
    return _NETWORKS[kind]


def build_model(kind: str, config: Mapping[str, Any] | Any):
    """A freshly initialised network of ``kind`` from its config (dataclass or dict)."""
    config_class, model_class = _kind_classes(kind)
    if not isinstance(config, config_class):
        if not isinstance(config, Mapping):
            raise ConfigError(
                f"a {kind} config must be a {config_class.__name__} or a dict, got {type(config).__name__}")
        config = config_class.from_dict(config)
    return model_class(config)


def software_versions() -> dict[str, str]:
    torch = _torch()
    return {"torch": str(torch.__version__), "spikereveal": __version__, "python": platform.python_version()}


def _plain(value):
    """Training arguments as types ``torch.load(weights_only=True)`` accepts (paths become strings)."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, (bool, int, float, str)):  # subclasses (e.g. TorchVersion) are not weights-only safe
        return (bool if isinstance(value, bool) else int if isinstance(value, int)
                else float if isinstance(value, float) else str)(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return str(value)


def describe_mismatch(expected: Mapping[str, tuple], found: Mapping[str, tuple]) -> list[str]:
    """Human-readable differences between two {tensor name: shape} maps; empty when they agree."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misshaped = sorted(
        f"{name} (expected {list(expected[name])}, found {list(found[name])})"
        for name in set(expected) & set(found)
        if tuple(expected[name]) != tuple(found[name])
    )
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped tensors: {', '.join(misshaped)}")
    return problems


def _shapes(state_dict: Mapping[str, Any]) -> dict[str, tuple]:
    return {name: tuple(tensor.shape) for name, tensor in state_dict.items()}


def load_matching_state_dict(model, state_dict: Mapping[str, Any], path: str | os.PathLike, what: str) -> None:
    """Copy ``state_dict`` into ``model`` after checking every name and shape; names all differences."""
    problems = describe_mismatch(_shapes(model.state_dict()), _shapes(state_dict))
    if problems:
        raise CheckpointError(path, f"{what} does not match the network: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


def save_checkpoint(path: str | os.PathLike, kind: str, model, config, training: Mapping[str, Any] | None = None,
                    source: str = "") -> Path:
    """Write ``model``'s weights with its config and provenance; returns the path. Atomic replace."""
    torch = _torch()
    config_class, model_class = _kind_classes(kind)
    if not isinstance(model, model_class):
        raise ConfigError(f"save_checkpoint(kind={kind!r}) needs a {model_class.__name__}, got {type(model).__name__}")
    if not isinstance(config, config_class):
        config = config_class.from_dict(config)
    if getattr(model, "config", config) != config:
        raise ConfigError(f"save_checkpoint: config {config} differs from the network's own {model.config}")
    config_dict = config.to_dict()
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "kind": kind,
        "config": _plain(config_dict),
        "state_dict": {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()},
        "training": None if training is None else _plain(dict(training)),
        "software": _plain(software_versions()),
        "source": str(source),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(payload, partial)
    os.replace(partial, path)
    return path


#: what each reader expects, for the messages that refuse another kind of file
EXPECTS_CHECKPOINT = ("a spikereveal checkpoint is expected here (--model, --init, --teacher-bsn/--teacher-sr): "
                      "a .pt file written by 'spikereveal train', 'adapt' or 'import-weights'")
EXPECTS_OFFICIAL = "the official S-SDM LDN weights are expected here: a PyTorch state dict such as DeblurNet_100.pth"


def _looks_like_onnx(head: bytes) -> bool:
    """An ONNX ModelProto starts with ir_version (field 1, a small varint) and then a string or the graph."""
    return len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] <= 32 and head[2] in (0x12, 0x1A, 0x22, 0x28, 0x3A)


def describe_non_torch_file(path: Path) -> str | None:
    """What ``path`` holds when it is plainly not a PyTorch file (``"is an ONNX model"`` ...); None when it
    may be one (a ZIP archive with ``data.pkl``, or a pickle)."""
    import zipfile

    if path.stat().st_size == 0:
        return "is an empty file"
    with open(path, "rb") as stream:
        head = stream.read(512)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            return "is a damaged ZIP archive"
        if any(name.endswith("data.pkl") for name in names):
            return None  # torch.save's format
        if names and all(name.endswith(".npy") for name in names):
            return "is a NumPy .npz archive"
        return "is a ZIP archive without PyTorch data"
    if head.startswith(b"\x80"):
        return None  # a pickle: torch.save's legacy format, or a plain pickle
    if _looks_like_onnx(head):
        return "is an ONNX model"
    if head.startswith(b"\x93NUMPY"):
        return "is a NumPy .npy array"
    if head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8\xff"):
        return "is an image"
    if head.startswith(b"\x89HDF"):
        return "is an HDF5 file (e.g. Keras weights)"
    if path.suffix.lower() in (".engine", ".plan", ".trt"):
        return "is a TensorRT engine"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "is of no format spikereveal knows (or damaged)"
    return "is a JSON file" if text.lstrip()[:1] in ("{", "[") else "is a text file"


def _read_tensor_file(path: Path, what: str, expects: str = EXPECTS_CHECKPOINT):
    """``torch.load(weights_only=True)`` with typed errors for a missing or non-PyTorch file; ``expects`` says
    what the caller reads (the message then says what the file is instead and what was expected)."""
    torch = _torch()
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    found = describe_non_torch_file(path)
    if found == "is an ONNX model":
        raise CheckpointError(path, "is an ONNX model (an inference export), not a PyTorch checkpoint: run it with "
                                    f"--onnx {path} (deblur, serve, eval with --engine ort); {expects}")
    if found is not None:
        raise CheckpointError(path, f"{found}, not a PyTorch checkpoint; {expects}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower() and "weights_only" not in str(exc).lower():
            raise CheckpointError(
                path, f"cannot be read as a PyTorch file (UnpicklingError: {exc}); it is damaged or not a "
                      f"PyTorch file; {expects}") from exc
        raise CheckpointError(
            path, "holds pickled Python objects besides tensors (for example a whole model saved with "
                  "torch.save(model)); only weights-only files are read: re-save it with "
                  f"torch.save(model.state_dict(), PATH); {expects}") from exc
    except Exception as exc:  # torch raises many types for non-PyTorch files (RuntimeError, EOFError ...)
        raise CheckpointError(
            path, f"cannot be read as a PyTorch weights file ({type(exc).__name__}: {exc}); it is damaged or "
                  f"not a PyTorch file; {expects}") from exc


def _is_tensor_dict(value) -> bool:
    torch = _torch()
    return isinstance(value, Mapping) and len(value) > 0 and all(
        isinstance(key, str) and isinstance(item, torch.Tensor) for key, item in value.items()
    )


def load_checkpoint(path: str | os.PathLike, expected_kind: str | None = None, map_location="cpu"):
    """Read a checkpoint and rebuild its network. Returns ``(model, meta)``; model is in eval mode.

    ``meta`` holds everything but the weights (format, version, kind, config, training, software, source)
    plus ``path``. ``expected_kind`` (``"ldn"``, ``"bsn"`` or ``"sr"``) refuses any other kind.
    """
    path = Path(path)
    if expected_kind is not None and expected_kind not in CHECKPOINT_KINDS:
        raise ConfigError(f"unknown checkpoint kind {expected_kind!r}; expected one of {list(CHECKPOINT_KINDS)}")
    payload = _read_tensor_file(path, "checkpoint")
    if not isinstance(payload, Mapping) or payload.get("format") != CHECKPOINT_FORMAT:
        hint = (" It looks like a plain state dict: for the official S-SDM LDN weights run "
                "'spikereveal import-weights PATH --out CKPT' first." if _is_tensor_dict(payload) else "")
        raise CheckpointError(path, f"is not a spikereveal checkpoint (no format={CHECKPOINT_FORMAT!r} entry).{hint}")
    version = payload.get("version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            path, f"has checkpoint version {version!r}; this spikereveal {__version__} reads version "
                  f"{CHECKPOINT_VERSION} (upgrade spikereveal for newer files)")
    for key in ("kind", "config", "state_dict"):
        if key not in payload:
            raise CheckpointError(path, f"is a damaged checkpoint: the {key!r} entry is missing")
    kind = payload["kind"]
    if kind not in CHECKPOINT_KINDS:
        raise CheckpointError(path, f"has unknown kind {kind!r}; expected one of {list(CHECKPOINT_KINDS)}")
    if expected_kind is not None and kind != expected_kind:
        raise CheckpointError(
            path, f"is a checkpoint of kind {kind!r}, but kind {expected_kind!r} is needed here; pass the "
                  f"{expected_kind} network's checkpoint")
    if not isinstance(payload["config"], Mapping) or not _is_tensor_dict(payload["state_dict"]):
        raise CheckpointError(
            path, "is a damaged checkpoint: 'config' must be a dict and 'state_dict' a dict of tensors")
    try:
        model = build_model(kind, payload["config"])
    except ConfigError as exc:
        raise CheckpointError(path, f"has an invalid {kind} config: {exc}") from exc
    load_matching_state_dict(model, payload["state_dict"], path, f"the {kind} checkpoint's state dict")
    model.to(map_location).eval()
    meta = {key: value for key, value in payload.items() if key != "state_dict"}
    meta["path"] = str(path)
    return model, meta


def declared_gain_range(meta: Mapping[str, Any]) -> tuple[float, float] | None:
    """The ``firing_gain_range`` ``(lo, hi)`` a checkpoint's training metadata declares (``meta`` as
    :func:`load_checkpoint` returns it); None when it declares none (see ``spikereveal.kernels.sensor``)."""
    from spikereveal.kernels.sensor import parse_gain_range

    training = meta.get("training") if isinstance(meta, Mapping) else None
    return parse_gain_range(training.get("firing_gain_range")) if isinstance(training, Mapping) else None


# ---- official S-SDM weights -------------------------------------------------------------------------

def _unwrap_state_dict(payload, path: Path) -> dict:
    """The tensor dict inside common training-script wrappers, with DataParallel-style prefixes removed."""
    for _ in range(3):  # wrappers nest at most a couple of levels in practice
        if _is_tensor_dict(payload):
            break
        if isinstance(payload, Mapping):
            inner = next((payload[key] for key in _STATE_DICT_WRAPPERS if isinstance(payload.get(key), Mapping)), None)
            if inner is not None:
                payload = inner
                continue
        break
    if not _is_tensor_dict(payload):
        keys = sorted(map(str, payload))[:8] if isinstance(payload, Mapping) else []
        raise CheckpointError(
            path, "holds no state dict (a dict of name -> tensor, possibly under "
                  f"{'/'.join(_STATE_DICT_WRAPPERS[:3])}); top-level keys: {keys}")
    state_dict = dict(payload)
    stripped = True
    while stripped:
        stripped = False
        for prefix in _KEY_PREFIXES:
            if all(name.startswith(prefix) for name in state_dict):
                state_dict = {name[len(prefix):]: tensor for name, tensor in state_dict.items()}
                stripped = True
    return state_dict


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_official_ldn(path: str | os.PathLike, spike_frames: int | None = None):
    """Our LDN holding the official S-SDM LDN weights from ``path``; returns ``(model, source_text)``.

    Accepts a plain state dict, one nested under common wrapper keys, or one with ``module.`` prefixes.
    The number of spike frames is read from ``spike_enc.0.weight`` unless given. Any missing, unexpected
    or mis-shaped tensor is refused with a message naming it.
    """
    from spikereveal.engines.ldn import LDN, LDNConfig

    path = Path(path)
    payload = _read_tensor_file(path, "weights file", EXPECTS_OFFICIAL)
    if isinstance(payload, Mapping) and payload.get("format") == CHECKPOINT_FORMAT:
        raise CheckpointError(path, "is already a spikereveal checkpoint; use it directly (no import needed)")
    state_dict = _unwrap_state_dict(payload, path)
    if spike_frames is None:
        first = state_dict.get("spike_enc.0.weight")
        spike_frames = int(first.shape[1]) if first is not None and first.ndim == 4 else LDNConfig().spike_frames
    model = LDN(LDNConfig(spike_frames=spike_frames))
    load_matching_state_dict(model, state_dict, path, "the weights file (expected the official S-SDM LDN state dict)")
    source = f"official S-SDM LDN weights imported from {path.resolve()} (sha256 {sha256_of(path)})"
    return model.eval(), source


def import_official_ldn(path: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Convert an official S-SDM LDN state dict at ``path`` into our checkpoint at ``out``; returns its meta."""
    model, source = read_official_ldn(path)
    save_checkpoint(out, "ldn", model, model.config, training=None, source=source)
    return {"kind": "ldn", "config": model.config.to_dict(), "source": source, "path": str(out),
            "parameters": sum(p.numel() for p in model.parameters())}


def interpolate_checkpoints(start: str | os.PathLike, end: str | os.PathLike, alpha: float,
                            out: str | os.PathLike, colour_anchor: str | None = None) -> dict:
    """Write ``(1 - alpha) * start + alpha * end``, tensor by tensor, as a checkpoint at ``out``; returns its meta.

    Weight-space interpolation between a network and its fine-tuned self (WiSE-FT, Wortsman et al., CVPR 2022):
    part of the start's robustness back at little cost to what fine-tuning gained. Both must be checkpoints of
    one kind with the same tensor names and shapes; the result takes ``end``'s config (e.g. its ``spike_norm``)
    and its training record, plus an ``interpolation`` entry (alpha, both files' paths, sha256 and sources).
    ``colour_anchor`` (students only): the result's ``LDNConfig.colour_anchor`` instead of ``end``'s.
    """
    torch = _torch()
    if isinstance(alpha, bool) or not 0.0 <= float(alpha) <= 1.0:
        raise ConfigError(f"--alpha (the weight of the end checkpoint) must be in [0, 1], got {alpha}")
    alpha = float(alpha)
    start_model, start_meta = load_checkpoint(start)
    end_model, end_meta = load_checkpoint(end)
    if start_meta["kind"] != end_meta["kind"]:
        raise ConfigError(f"cannot interpolate a {start_meta['kind']} checkpoint ({start}) with a "
                          f"{end_meta['kind']} one ({end}); give two checkpoints of the same network")
    start_state, end_state = start_model.state_dict(), end_model.state_dict()
    problems = describe_mismatch(_shapes(end_state), _shapes(start_state))
    if problems:
        raise CheckpointError(Path(start), f"does not have the tensors of {end} (another architecture or variant): "
                              + "; ".join(problems))
    blended = {}
    for name, tensor in end_state.items():
        if tensor.is_floating_point():
            blended[name] = (1.0 - alpha) * start_state[name].to(tensor.dtype) + alpha * tensor
        elif torch.equal(tensor, start_state[name]):
            blended[name] = tensor
        else:
            raise CheckpointError(Path(start), f"non-float tensor {name} differs from {end}'s; it cannot be "
                                               "interpolated")
    if colour_anchor is not None:
        if end_meta["kind"] != "ldn":
            raise ConfigError(f"--colour-anchor is a student (ldn) setting; {end} is a {end_meta['kind']} checkpoint")
        end_model = build_model("ldn", replace(end_model.config, colour_anchor=colour_anchor))
    end_model.load_state_dict(blended, strict=True)
    training = dict(end_meta.get("training") or {})
    training["interpolation"] = {
        "alpha": alpha,
        "start": {"path": os.fspath(start), "sha256": sha256_of(start), "source": start_meta.get("source", "")},
        "end": {"path": os.fspath(end), "sha256": sha256_of(end), "source": end_meta.get("source", "")},
    }
    source = f"spikereveal interpolate-weights: {1 - alpha:g} x {Path(start).name} + {alpha:g} x {Path(end).name}"
    save_checkpoint(out, end_meta["kind"], end_model, end_model.config, training=training, source=source)
    return {"kind": end_meta["kind"], "alpha": alpha, "source": source, "path": os.fspath(out),
            "parameters": sum(p.numel() for p in end_model.parameters())}
