"""Real spike data from ../shared/reference (Spike-Zoo samples, MIT): orientation, bit order, round trips."""

from pathlib import Path

import numpy as np
import pytest

from spikereveal.errors import ConfigError
from spikereveal.kernels.packing import pack_frames, unpack_frames
from spikereveal.spikefile import SpikeFile, read_dat, write_dat

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "reference" / "spike_samples"
REDS_DAT = SAMPLES / "spikezoo_reds_200_part1_key_id151.dat"
REDS_GT = SAMPLES / "spikezoo_reds_200_part1_key_id151_gt.png"
UHSR_NPZ = SAMPLES / "spikezoo_uhsr_real_sample.npz"

pytestmark = pytest.mark.skipif(
    not SAMPLES.is_dir(), reason=f"reference spike samples not found at {SAMPLES} (../shared beside the repo)"
)

HEIGHT, WIDTH, KEY_FRAME, TFP_FRAMES = 250, 400, 151, 41


def tfp_correlation_with_ground_truth(flip_rows: bool) -> float:
    """Pearson correlation of the 41-frame TFP around frame 151 with the gray ground truth."""
    import cv2

    with SpikeFile(REDS_DAT, HEIGHT, WIDTH, flip_rows=flip_rows, bit_order="little") as spikes:
        assert spikes.frame_count == 301 and spikes.truncated_bytes == 0
        half = TFP_FRAMES // 2
        frames = unpack_frames(spikes.read(KEY_FRAME - half, KEY_FRAME + half + 1), HEIGHT, WIDTH)
    tfp = frames.mean(axis=0, dtype=np.float64)
    image = cv2.imread(str(REDS_GT), cv2.IMREAD_UNCHANGED).astype(np.float64)
    if image.ndim == 3:  # BGR -> gray with the project's weights
        image = 0.3 * image[..., 2] + 0.59 * image[..., 1] + 0.11 * image[..., 0]
    assert image.shape == (HEIGHT, WIDTH)
    return float(np.corrcoef(tfp.ravel(), image.ravel())[0, 1])


def test_reds_sample_is_stored_upside_down():
    upright = tfp_correlation_with_ground_truth(flip_rows=True)
    wrong = tfp_correlation_with_ground_truth(flip_rows=False)
    # measured here: 0.988 with the right orientation, -0.115 with the wrong one
    assert upright >= 0.95
    assert wrong < 0.95 and wrong < upright - 0.5


def test_reds_sample_reads_the_same_through_every_path(tmp_path):
    everything = read_dat(REDS_DAT, HEIGHT, WIDTH, flip_rows=True, bit_order="little")
    assert everything.shape == (301, HEIGHT * WIDTH // 8)
    copy = tmp_path / "copy.dat"
    write_dat(copy, everything, HEIGHT, WIDTH, flip_rows=True, bit_order="little")
    assert copy.read_bytes() == REDS_DAT.read_bytes()


def test_uhsr_real_sample_round_trips(tmp_path):
    with np.load(UHSR_NPZ) as archive:
        spikes = archive["spk"]
    assert spikes.shape == (200, 250, 250) and set(np.unique(spikes)) <= {0, 1}
    # 250x250 = 62500 pixels is not a whole number of bytes, so SPEC §2 cannot pack it: say so clearly
    with pytest.raises(ConfigError, match="not a multiple of 8"):
        pack_frames(spikes)
    # a 250x244 crop packs (W not a multiple of 8 exercises the bit-level row flip)
    crop = np.ascontiguousarray(spikes[:, :, :244])
    packed = pack_frames(crop)
    for flip_rows, bit_order in [(True, "little"), (False, "big")]:
        path = tmp_path / f"uhsr_{flip_rows}_{bit_order}.dat"
        write_dat(path, packed, 250, 244, flip_rows=flip_rows, bit_order=bit_order)
        with SpikeFile(path, 250, 244, flip_rows=flip_rows, bit_order=bit_order) as spike_file:
            assert spike_file.frame_count == 200
            np.testing.assert_array_equal(unpack_frames(spike_file.read(0, 200), 250, 244), crop)
            np.testing.assert_array_equal(spike_file.read(57, 90), packed[57:90])
