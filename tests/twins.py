"""The slow reference implementations ("twins") the tests hold the fast code to, one per kernel, in one place.

Each twin is written in plain numpy (or, for the networks, torch.nn.functional), independent of the code it
mirrors, and its docstring names that code. Not a test module: the tests import it (``tests/`` is on the
import path through ``pythonpath`` in pyproject.toml). torch is imported only inside the network twins, so
this module imports without the ``train`` extra.
"""

from __future__ import annotations

import numpy as np

from spikereveal.kernels.packing import pack_frames
from spikereveal.kernels.sensor import GRAY_WEIGHTS_BGR


# -- kernels.accumulate ----------------------------------------------------------------------------------------
def reference_counts(bits: np.ndarray, starts, stops) -> np.ndarray:
    """Twin of ``kernels.accumulate.window_counts`` (and ``window_count``, ``SpikeAccumulator.counts``):
    unpacked 0/1 frames (N, H, W) summed over each window."""
    return np.stack([bits[a:b].sum(axis=0, dtype=np.int64) for a, b in zip(starts, stops)])


# -- kernels.extract -------------------------------------------------------------------------------------------
def reference_ldn_input(bits: np.ndarray, centers, window: int, first_index: int = 0) -> np.ndarray:
    """Twin of ``kernels.extract.extract_ldn_input``: for each centre, the unpacked 0/1 frames (N, H, W)
    centre - window//2 .. centre + window//2, as float32."""
    half = window // 2
    return np.stack(
        [bits[c - first_index - half : c - first_index + half + 1].astype(np.float32) for c in centers]
    ).reshape(len(centers), window, *bits.shape[1:])


# -- kernels.convert -------------------------------------------------------------------------------------------
def reference_bgr8(images: np.ndarray) -> np.ndarray:
    """Twin of ``kernels.convert.planar_to_bgr8``: the expression the offline path used before the kernel,
    NaN mapped to 0 first (casting NaN to uint8 is undefined in numpy; the kernel defines it as 0)."""
    images = np.where(np.isnan(images), images.dtype.type(0), images)
    scaled = np.clip(images, 0.0, 1.0) * np.float32(255.0) + np.float32(0.5)
    return scaled.transpose(0, 2, 3, 1).astype(np.uint8)


def reference_planar(image: np.ndarray, copies: int) -> np.ndarray:
    """Twin of ``kernels.convert.bgr8_to_planar``: uint8 (H, W, 3) -> ``copies`` x (3, H, W) float32 / 255."""
    planar = image.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    return np.broadcast_to(planar, (copies, *planar.shape))


# -- kernels.images --------------------------------------------------------------------------------------------
def reference_tfi(bits: np.ndarray, center: int) -> np.ndarray:
    """Twin of ``kernels.images.tfi``: per pixel, 1 / (first spike after ``center`` - last spike at or before
    it), 0 without both."""
    frames, height, width = bits.shape
    image = np.zeros((height, width), dtype=np.float32)
    for y in range(height):
        for x in range(width):
            before = np.flatnonzero(bits[: center + 1, y, x])
            after = np.flatnonzero(bits[center + 1 :, y, x])
            if before.size and after.size:
                image[y, x] = 1.0 / (center + 1 + after[0] - before[-1])
    return image


def reference_upsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Twin of ``kernels.images.upsample_nearest``: every pixel repeated ``factor`` x ``factor`` times."""
    height, width = image.shape[-2:]
    result = np.empty(image.shape[:-2] + (height * factor, width * factor), dtype=image.dtype)
    for y in range(height * factor):
        for x in range(width * factor):
            result[..., y, x] = image[..., y // factor, x // factor]
    return result


def reference_sdm(blur, short, long):
    """Twin of ``kernels.images.sdm``: clip(blur * up4(short / long)), 0 where ``long`` is 0."""
    ratio = np.zeros(np.broadcast_shapes(short.shape, long.shape), dtype=np.float64)
    nonzero = np.broadcast_to(long != 0, ratio.shape)
    ratio[nonzero] = (short / np.where(long == 0, 1, long))[nonzero]
    up = reference_upsample(ratio, 4)
    return np.clip(blur.astype(np.float64) * up[..., None, :, :], 0, 1)


# -- kernels.sensor --------------------------------------------------------------------------------------------
def reference_rate(bits: np.ndarray, first: int, stop: int, step: int) -> float:
    """Twin of ``kernels.sensor.mean_spike_rate``: unpacked 0/1 frames (N, H, W), mean over frames first,
    first + step, ... < stop."""
    return float(bits[first:stop:step].mean())


def reference_gray(image: np.ndarray, step: int = 1) -> float:
    """Twin of ``kernels.sensor.gray_mean``: uint8 (H, W, 3) BGR or float (3, H, W) BGR -> mean of
    0.11 B + 0.59 G + 0.3 R in [0, 1]."""
    if image.dtype == np.uint8:
        pixels = image[::step, ::step].reshape(-1, 3).astype(np.float64) / 255.0
    else:
        pixels = image[:, ::step, ::step].reshape(3, -1).T.astype(np.float64)
    return float((pixels @ np.asarray(GRAY_WEIGHTS_BGR)).mean())


# -- sim (the simulator's numba kernels) -------------------------------------------------------------------------
def reference_integrate_and_fire(intensity, accumulator, thresholds, gain, rate=None, uniforms=None,
                                 electrons=0.0, normals=None):
    """Twin of ``sim.spikes.integrate_and_fire``: one frame at a time, same arithmetic. Returns the packed
    spikes and the new accumulator (``accumulator`` itself is left as it was)."""
    acc = accumulator.copy()
    spikes = np.zeros(intensity.shape, dtype=bool)
    for t in range(intensity.shape[0]):
        charge = np.maximum(gain * intensity[t].astype(np.float64), 0.0)
        if electrons > 0:
            noisy = charge + np.sqrt(charge * thresholds * (1.0 / electrons)) * normals[t].astype(np.float64)
            charge = np.where(charge > 0, np.maximum(noisy, 0.0), charge)
        level = acc + charge
        fired = level > thresholds
        level = np.where(fired, np.minimum(level - thresholds, thresholds), level)
        acc = level
        if rate is not None:
            fired = fired | (uniforms[t] < rate.astype(np.float32))
        spikes[t] = fired
    return pack_frames(spikes), acc


def reference_composite(frame: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """Twin of ``sim.render.composite_premultiplied``: frame (h, w, 3) * (1 - alpha) + the premultiplied
    colour of ``layer`` (h, w, 4)."""
    return frame * (1.0 - layer[:, :, 3:]) + layer[:, :, :3]


# -- calibration ---------------------------------------------------------------------------------------------------
def reference_fill(values, hot):
    """Twin of ``calibration.photometric.PhotometricCalibration.fill_hot_pixels``: mean of the non-hot pixels
    in the smallest (3x3, 5x5, 7x7) window that has any."""
    out = values.astype(np.float64).copy()
    for r, c in zip(*np.nonzero(hot)):
        for radius in (1, 2, 3):
            window = (slice(max(r - radius, 0), r + radius + 1), slice(max(c - radius, 0), c + radius + 1))
            good = ~hot[window]
            if good.any():
                out[..., r, c] = values[(...,) + window][..., good].mean(axis=-1)
                break
        else:
            out[..., r, c] = 0
    return out


# -- spikefile ---------------------------------------------------------------------------------------------------
def reference_dat_bytes(frames, flip_rows, bit_order, row_bits=None, junk=None):
    """Twin of ``spikefile.write_dat`` (the `.dat` layout): written straight from SPEC §2, independent of
    spikereveal's packing helpers.

    ``frames`` are (N, H, W) 0/1 top row first; USB rows are padded to ``row_bits`` with ``junk`` bits.
    """
    stored = frames[:, ::-1, :] if flip_rows else frames
    if row_bits is not None:
        n, height, width = frames.shape
        padding = junk if junk is not None else np.zeros((n, height, row_bits - width), dtype=np.uint8)
        stored = np.concatenate([stored, padding], axis=2)
    flat = stored.reshape(stored.shape[0], -1).astype(np.uint8)
    return np.packbits(flat, axis=1, bitorder=bit_order).tobytes()


# -- networks (need torch; imported here only when called) --------------------------------------------------------
def reference_ldn(sd, blur, spikes):
    """Twin of ``engines.ldn.LDN.forward``: the official Deblur_Net forward written out with
    torch.nn.functional over a raw state dict."""
    import torch
    import torch.nn.functional as F

    def conv(x, name, stride=1, padding=0):
        return F.conv2d(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"), stride, padding)

    def deconv(x, name):
        return F.conv_transpose2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], 2, 2, output_padding=1)

    b = F.relu(conv(F.relu(conv(blur, "blur_enc.0", 2, 2)), "blur_enc2.0", 2, 2))
    s = F.relu(conv(F.relu(conv(spikes, "spike_enc.0", 1, 1)), "spike_enc2.0", 1, 1))
    x = torch.cat([b, s], 1)

    def mlp(v):
        return conv(F.relu(conv(v, "ca.fc.0")), "ca.fc.2")

    x = torch.sigmoid(mlp(F.adaptive_avg_pool2d(x, 1)) + mlp(F.adaptive_max_pool2d(x, 1))) * x
    x = torch.sigmoid(conv(torch.cat([x.mean(1, keepdim=True), x.max(1, keepdim=True)[0]], 1), "sa.conv1", 1, 3)) * x
    for block in ("resBlock1", "resBlock2"):
        x = x + conv(F.relu(conv(x, f"{block}.conv_block.0", 1, 1)), f"{block}.conv_block.3", 1, 1)
    x = F.relu(deconv(F.relu(deconv(x, "decoder1.0")), "decoder2.0"))
    return conv(torch.cat([blur, x], 1), "pred")


def reference_sharp8(model, image: np.ndarray, spikes: np.ndarray) -> np.ndarray:
    """Twin of the deployed graph (``engines.ldn.ExposureLDN``, as exported to ONNX / TensorRT): its float
    reference ``planar_to_bgr8(model.forward_exposure(image/255, spikes/SPIKE_LEVEL))`` -> (K,H,W,3) uint8."""
    import torch

    from spikereveal.kernels.convert import planar_to_bgr8
    from spikereveal.kernels.extract import SPIKE_LEVEL

    blur = image.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    levels = spikes.astype(np.float32) / np.float32(SPIKE_LEVEL)
    with torch.no_grad():
        sharp = model.forward_exposure(torch.from_numpy(np.ascontiguousarray(blur)), torch.from_numpy(levels))
    return planar_to_bgr8(sharp.numpy())


def reference_teacher(blur, short, long, bsn_factor, sr_gain):
    """Twin of ``training.teacher.teacher_frames`` with a stand-in BSN (x ``bsn_factor``) and SR (nearest x4,
    x ``sr_gain``): clip(B * SR(clip(BSN(short))) / SR(long)), every stage clipped, 0 where the denominator
    is 0."""
    up = lambda a: np.repeat(np.repeat(a, 4, -2), 4, -1)  # noqa: E731
    numerator = np.clip(up(np.clip(short * bsn_factor, 0, 1)) * sr_gain, 0, 1)[:, None]
    denominator = np.clip(up(long) * sr_gain, 0, 1)[None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(denominator == 0, 0.0, blur[None] / denominator)
    return np.clip(ratio * numerator, 0, 1)
