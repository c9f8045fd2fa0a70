"""Rig geometry: the homography from the canonical grid (4x the spike grid) into the RGB image (SPEC §4).

Convention: ``H`` maps a canonical pixel ``(x, y, 1)`` to an RGB pixel, pixel centres at integer
coordinates (OpenCV's convention). A spike pixel ``(j, i)`` integrates canonical pixels
``[4j, 4j + 4) x [4i, 4i + 4)``, so its centre is canonical ``(4j + 1.5, 4i + 1.5)``; ``cv2.resize`` with
``INTER_LINEAR``/``INTER_AREA`` keeps exactly this correspondence, which is why images move between the
grids only through :func:`spike_to_canonical` and :func:`canonical_to_spike`.

Two estimators, both on the long TFP (the spike rate over an exposure), which is up to a gain the gray
blurry RGB frame: a checkerboard seen by both cameras (corner detection, then ``findHomography``), and a
target-free alignment (ORB/AKAZE features + RANSAC for a start, then ECC with a homography motion model,
coarse to fine). Both report a residual in canonical pixels and refuse untrustworthy fits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cv2
import numpy as np

from spikereveal.calibration.errors import CalibrationError
from spikereveal.errors import ConfigError
from spikereveal.kernels.images import SPIKE_TO_IMAGE_SCALE

logger = logging.getLogger(__name__)

GEOMETRY_METHODS = ("checkerboard", "features", "identity")
GRAY_WEIGHTS_BGR = np.array([0.11, 0.59, 0.3], dtype=np.float32)  # gray = 0.3R + 0.59G + 0.11B
DEFAULT_BOARD_INNER_CORNERS = (8, 5)  # (columns, rows) of inner corners: a 9 x 6-square board
DEFAULT_MAX_RESIDUAL_PX = 1.0  # canonical px; above this a fit is refused
DEFAULT_MIN_CORRELATION = 0.85  # ECC correlation coefficient below which an alignment is not trusted
DEFAULT_MIN_TEXTURE = 0.005  # relative gradient in the weakest direction (see texture_strength)


# -- images between the grids --------------------------------------------------------------------------
def gray(image: np.ndarray) -> np.ndarray:
    """(3, H, W) BGR float -> (H, W) float32 gray (0.3 R + 0.59 G + 0.11 B); (H, W) passes through."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        return image
    if image.ndim != 3 or image.shape[0] != 3:
        raise ConfigError(f"expected a (3, H, W) BGR image or an (H, W) gray one, got shape {image.shape}")
    return np.tensordot(GRAY_WEIGHTS_BGR, image, axes=1).astype(np.float32)


def spike_to_canonical(image: np.ndarray, scale: int = SPIKE_TO_IMAGE_SCALE) -> np.ndarray:
    """A spike-grid image (h, w) -> the canonical grid (scale*h, scale*w), bilinear, centres aligned."""
    image = np.asarray(image, dtype=np.float32)
    height, width = image.shape
    return cv2.resize(image, (width * scale, height * scale), interpolation=cv2.INTER_LINEAR)


def canonical_to_spike(image: np.ndarray, scale: int = SPIKE_TO_IMAGE_SCALE) -> np.ndarray:
    """A canonical-grid image (..., H, W) -> the spike grid by area averaging (what a spike pixel sees)."""
    image = np.asarray(image, dtype=np.float32)
    height, width = image.shape[-2:]
    if height % scale or width % scale:
        raise ConfigError(f"a canonical image must be a multiple of {scale} in size, got {width}x{height}")
    size = (width // scale, height // scale)
    if image.ndim == 2:
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    flat = image.reshape(-1, height, width)
    return np.stack([cv2.resize(plane, size, interpolation=cv2.INTER_AREA) for plane in flat]).reshape(
        image.shape[:-2] + (size[1], size[0])
    )


def scale_prior(canonical_shape: tuple[int, int], rgb_shape: tuple[int, int]) -> np.ndarray:
    """The homography of an RGB camera that sees exactly the canonical field of view (a pure scale)."""
    (ch, cw), (rh, rw) = canonical_shape, rgb_shape
    sx, sy = rw / cw, rh / ch
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def check_homography(homography, name: str = "homography") -> np.ndarray:
    matrix = np.asarray(homography, dtype=np.float64)
    if matrix.shape != (3, 3) or not np.all(np.isfinite(matrix)):
        raise ConfigError(f"{name} must be a finite 3x3 matrix, got {matrix.shape}")
    if abs(np.linalg.det(matrix)) < 1e-12 or matrix[2, 2] == 0:
        raise ConfigError(f"{name} is singular")
    return matrix / matrix[2, 2]


def project(homography: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a homography to (N, 2) points."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    mapped = np.c_[points, np.ones(len(points))] @ np.asarray(homography, dtype=np.float64).T
    return mapped[:, :2] / mapped[:, 2:3]


def frame_corners(shape: tuple[int, int]) -> np.ndarray:
    """The four corner pixel centres of an (H, W) image, (4, 2) as (x, y)."""
    height, width = shape
    return np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], dtype=np.float64)


def corner_error_px(estimated, truth, canonical_shape: tuple[int, int]) -> float:
    """RMS distance on the canonical grid between where the two homographies send the frame corners:
    corners -> RGB by ``estimated``, back by ``truth``'s inverse."""
    corners = frame_corners(canonical_shape)
    back = project(np.linalg.inv(check_homography(truth)), project(check_homography(estimated), corners))
    return float(np.sqrt(np.mean(np.sum((back - corners) ** 2, axis=1))))


def warp_to_canonical(
    image: np.ndarray, homography, canonical_shape: tuple[int, int], interpolation: int = cv2.INTER_LINEAR
) -> np.ndarray:
    """An RGB-camera image (3, h, w) or (h, w) resampled onto the canonical grid (3, H, W) / (H, W).

    ``homography`` maps canonical -> RGB pixels, so it is exactly the inverse map ``warpPerspective`` wants.
    Pixels that see outside the RGB frame repeat its border (the network dislikes black bands).
    """
    matrix = check_homography(homography)
    image = np.asarray(image, dtype=np.float32)
    height, width = canonical_shape
    flags = interpolation | cv2.WARP_INVERSE_MAP
    if image.ndim == 2:
        return cv2.warpPerspective(image, matrix, (width, height), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ConfigError(f"expected a (3, h, w) image, got shape {image.shape}")
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
    warped = cv2.warpPerspective(hwc, matrix, (width, height), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(warped.transpose(2, 0, 1))


def warp_bgr8_to_canonical(image: np.ndarray, homography, canonical_shape: tuple[int, int],
                           interpolation: int = cv2.INTER_LINEAR, out: np.ndarray | None = None) -> np.ndarray:
    """A camera frame (h, w, 3) uint8 BGR resampled onto the canonical grid (H, W, 3) uint8, with the same
    map and border rule as :func:`warp_to_canonical` (OpenCV rounds the interpolated values). ``out``: a
    C-contiguous (H, W, 3) uint8 array OpenCV writes into (no intermediate frame)."""
    height, width = canonical_shape
    return cv2.warpPerspective(np.ascontiguousarray(image), check_homography(homography), (width, height), dst=out,
                               flags=interpolation | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)


def valid_canonical_mask(homography, canonical_shape: tuple[int, int], rgb_shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: canonical pixels whose RGB position lies inside the RGB frame."""
    ones = np.ones(rgb_shape, dtype=np.float32)
    height, width = canonical_shape
    warped = cv2.warpPerspective(ones, check_homography(homography), (width, height),
                                 flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT)
    return warped > 0.5


# -- result --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class GeometryCalibration:
    """Homography canonical -> RGB, how it was found and how well it fits.

    ``residual_px`` (canonical px): checkerboard, RMS corner reprojection error; features, RMS spread of
    the per-exposure alignments around the consensus. ``inliers``/``points``: corners (checkerboard) or
    exposures (features) kept / tried.
    """

    homography: np.ndarray
    method: str
    residual_px: float | None
    inliers: int
    points: int
    exposures: tuple[int, ...] = ()
    details: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "homography", check_homography(self.homography))
        if self.method not in GEOMETRY_METHODS:
            raise ConfigError(f"geometry method must be one of {GEOMETRY_METHODS}, got {self.method!r}")
        if self.residual_px is not None and not (np.isfinite(self.residual_px) and self.residual_px >= 0):
            raise ConfigError(f"geometry residual_px must be a non-negative number, got {self.residual_px!r}")
        for name in ("inliers", "points"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ConfigError(f"geometry {name} must be a non-negative integer, got {value!r}")
        object.__setattr__(self, "inliers", int(self.inliers))
        object.__setattr__(self, "points", int(self.points))
        object.__setattr__(self, "exposures", tuple(int(i) for i in self.exposures))
        if self.residual_px is not None:
            object.__setattr__(self, "residual_px", float(self.residual_px))

    def to_json(self) -> dict:
        return {
            "homography": [[float(v) for v in row] for row in self.homography],
            "direction": "canonical_to_rgb",
            "method": self.method,
            "residual_px": self.residual_px,
            "inliers": self.inliers,
            "points": self.points,
            "exposures": list(self.exposures),
            "details": self.details,
        }


# -- checkerboard ---------------------------------------------------------------------------------------
def _to_uint8(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Stretch the 0.5..99.5 percentiles to 0..255 (detectors want 8 bits; the TFP's gain is arbitrary)."""
    values = image[mask] if mask is not None and mask.any() else image
    low, high = np.percentile(values, (0.5, 99.5))
    if high - low < 1e-6:
        return np.zeros(image.shape, dtype=np.uint8)
    return np.clip((image - low) * (255.0 / (high - low)) + 0.5, 0, 255).astype(np.uint8)


def find_checkerboard(image: np.ndarray, inner_corners: tuple[int, int] = DEFAULT_BOARD_INNER_CORNERS):
    """Sub-pixel inner corners (N, 2) of a checkerboard in a gray image (any gain), or None if not found.

    ``inner_corners`` = (columns, rows) of inner corners; corners come row by row.
    """
    columns, rows = inner_corners
    if columns < 2 or rows < 2:
        raise ConfigError(f"a checkerboard needs at least 2x2 inner corners, got {columns}x{rows}")
    image = np.asarray(image, dtype=np.float32)
    pixels = _to_uint8(image)
    flags = cv2.CALIB_CB_NORMALIZE_IMAGE | cv2.CALIB_CB_EXHAUSTIVE | cv2.CALIB_CB_ACCURACY
    found, corners = cv2.findChessboardCornersSB(pixels, (columns, rows), flags=flags)
    if not found:
        flags = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE
        found, corners = cv2.findChessboardCorners(pixels, (columns, rows), flags=flags)
        if not found:
            return None
    # gradient-based refinement on the unquantised image: halves the error of either detector
    grid = corners.reshape(rows, columns, 2)
    spacing = min(np.linalg.norm(np.diff(grid, axis=0), axis=2).min(),
                  np.linalg.norm(np.diff(grid, axis=1), axis=2).min())
    half = int(np.clip(spacing / 3, 2, 11))
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 100, 1e-4)
    corners = cv2.cornerSubPix(image, corners.astype(np.float32).reshape(-1, 1, 2), (half, half), (-1, -1), criteria)
    return corners.reshape(-1, 2).astype(np.float64)


def _orient_like(reference: np.ndarray, reference_shape, corners: np.ndarray, corners_shape,
                 inner_corners: tuple[int, int]) -> np.ndarray:
    """Reorder ``corners`` so that corner i is the same board corner as ``reference[i]``.

    A detector may return the grid rotated by 180 degrees (90 too for a square grid). A homography fits
    either order equally well, so pick the order whose corners sit at the same relative image positions
    (the two cameras of a rig look the same way)."""
    columns, rows = inner_corners
    grid = corners.reshape(rows, columns, 2)
    candidates = [grid, grid[::-1, ::-1]]
    if rows == columns:
        candidates += [np.rot90(grid, 1), np.rot90(grid, 3)]
    ref_norm = reference / np.array([reference_shape[1], reference_shape[0]], dtype=np.float64)
    scale = np.array([corners_shape[1], corners_shape[0]], dtype=np.float64)
    costs = [np.sum((c.reshape(-1, 2) / scale - ref_norm) ** 2) for c in candidates]
    return candidates[int(np.argmin(costs))].reshape(-1, 2)


def checkerboard_correspondences(
    tfp_canonical: np.ndarray,
    rgb_gray: np.ndarray,
    inner_corners: tuple[int, int] = DEFAULT_BOARD_INNER_CORNERS,
):
    """(canonical corners, RGB corners) of one exposure, matched; None where either side finds no board."""
    canonical = find_checkerboard(tfp_canonical, inner_corners)
    if canonical is None:
        return None, "spike"
    rgb = find_checkerboard(rgb_gray, inner_corners)
    if rgb is None:
        return None, "rgb"
    rgb = _orient_like(canonical, tfp_canonical.shape, rgb, rgb_gray.shape, inner_corners)
    return (canonical, rgb), None


def fit_checkerboard(
    pairs: list[tuple[np.ndarray, np.ndarray]],
    exposures: list[int],
    inner_corners: tuple[int, int],
    tried: int,
    misses: dict[str, int],
    max_residual_px: float = DEFAULT_MAX_RESIDUAL_PX,
) -> GeometryCalibration:
    """One homography from the corner pairs of every exposure where both cameras saw the board."""
    board = f"{inner_corners[0]}x{inner_corners[1]}-inner-corner"
    if not pairs:
        raise CalibrationError(
            f"no {board} checkerboard was found in both cameras in any of the {tried} exposure(s) tried "
            f"(missed in the spike image {misses.get('spike', 0)} time(s), in the RGB image "
            f"{misses.get('rgb', 0)} time(s)); check --board (inner corners, columns x rows), that the whole "
            "board is in view of both cameras, evenly lit and not too blurred"
        )
    canonical = np.concatenate([p[0] for p in pairs])
    rgb = np.concatenate([p[1] for p in pairs])
    # RANSAC in RGB px; the threshold scales with the RGB/canonical size ratio
    spread = np.sqrt(abs(np.linalg.det(np.cov(rgb.T))) / max(abs(np.linalg.det(np.cov(canonical.T))), 1e-12))
    threshold = 3.0 * float(np.sqrt(spread))
    matrix, mask = cv2.findHomography(canonical, rgb, cv2.RANSAC, threshold, maxIters=5000, confidence=0.999)
    if matrix is None:
        raise CalibrationError("the checkerboard corners admit no homography (degenerate corner layout)")
    inliers = mask.ravel().astype(bool)
    if inliers.sum() >= 4:
        matrix, _ = cv2.findHomography(canonical[inliers], rgb[inliers], 0)
    back = project(np.linalg.inv(matrix), rgb[inliers])
    residual = float(np.sqrt(np.mean(np.sum((back - canonical[inliers]) ** 2, axis=1))))
    result = GeometryCalibration(
        matrix, "checkerboard", residual, int(inliers.sum()), len(canonical), tuple(exposures),
        {"board_inner_corners": list(inner_corners), "exposures_tried": tried},
    )
    if inliers.sum() < 0.8 * len(canonical):
        raise CalibrationError(
            f"only {int(inliers.sum())} of {len(canonical)} checkerboard corners agree on one homography; "
            "the detections are inconsistent (board moving, wrong --board, or lens distortion)"
        )
    if residual > max_residual_px:
        raise CalibrationError(
            f"checkerboard residual {residual:.2f} px RMS on the canonical grid exceeds {max_residual_px} px; "
            "the fit is not trustworthy (board moving during exposures, lens distortion, or blur); "
            "record a still board, or raise the limit knowingly"
        )
    return result


# -- target-free ----------------------------------------------------------------------------------------
def texture_strength(tfp: np.ndarray, mask: np.ndarray | None = None) -> float:
    """How well an image constrains an alignment: in the weakest of its 4 quadrants (the 3rd weakest of
    them, so one flat corner such as sky is tolerated), the RMS relative intensity gradient along the
    weakest direction, per spike pixel, at a scale above the spike noise."""
    image = np.asarray(tfp, dtype=np.float32)
    mean = float(image[mask].mean() if mask is not None and mask.any() else image.mean())
    if mean <= 1e-6:
        return 0.0
    smooth = cv2.GaussianBlur(image / mean, (0, 0), 1.5)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    height, width = image.shape
    strengths = []
    for rows in (slice(0, height // 2), slice(height // 2, height)):
        for cols in (slice(0, width // 2), slice(width // 2, width)):
            keep = np.ones((height, width), bool) if mask is None else mask
            keep = keep[rows, cols]
            if keep.sum() < 16:
                strengths.append(0.0)
                continue
            x, y = gx[rows, cols][keep], gy[rows, cols][keep]
            tensor = np.array([[np.mean(x * x), np.mean(x * y)], [np.mean(x * y), np.mean(y * y)]])
            strengths.append(float(np.sqrt(max(np.linalg.eigvalsh(tensor)[0], 0.0))))
    return sorted(strengths)[1]


def _resize_matrix(old_shape, new_shape) -> np.ndarray:
    """Pixel map of ``cv2.resize`` from old to new size: x' = (x + 0.5) * f - 0.5."""
    fy, fx = new_shape[0] / old_shape[0], new_shape[1] / old_shape[1]
    return np.array([[fx, 0.0, 0.5 * fx - 0.5], [0.0, fy, 0.5 * fy - 0.5], [0.0, 0.0, 1.0]])


def _pyramid_level(image: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return image
    height, width = image.shape
    size = (max(8, int(round(width / factor))), max(8, int(round(height / factor))))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def align_ecc(
    template: np.ndarray,
    image: np.ndarray,
    initial: np.ndarray,
    levels: int = 3,
    iterations: int = 200,
    epsilon: float = 1e-7,
    smoothing: int = 5,
) -> tuple[np.ndarray, float]:
    """Refine ``initial`` (template px -> image px) by ECC with a homography model, coarse to fine.

    ECC maximises the correlation coefficient, so the template may differ from the image by a gain and an
    offset (the TFP's gain is unknown). Returns the homography and the final correlation coefficient;
    raises CalibrationError when ECC does not converge at the finest level.
    """
    matrix = check_homography(initial)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, epsilon)
    correlation = float("nan")
    for level in reversed(range(levels)):
        factor = 2**level
        t_level = _pyramid_level(template, factor)
        i_level = _pyramid_level(image, factor)
        to_t = _resize_matrix(template.shape, t_level.shape)
        to_i = _resize_matrix(image.shape, i_level.shape)
        warp = (to_i @ matrix @ np.linalg.inv(to_t)).astype(np.float32)
        warp /= warp[2, 2]
        try:
            correlation, warp = cv2.findTransformECC(
                t_level, i_level, warp, cv2.MOTION_HOMOGRAPHY, criteria, None, smoothing
            )
        except cv2.error as exc:
            if level > 0:  # a coarse level may fail on tiny images; the finer ones still decide
                logger.debug("ECC level %d failed: %s", level, exc)
                continue
            raise CalibrationError(f"ECC alignment did not converge ({str(exc).strip().splitlines()[-1]})") from None
        matrix = check_homography(np.linalg.inv(to_i) @ warp.astype(np.float64) @ to_t)
    return matrix, float(correlation)


def _feature_detectors():
    """AKAZE where this OpenCV build has it (binary descriptors, robust to blur), else ORB."""
    detectors = []
    if hasattr(cv2, "AKAZE_create"):
        detectors.append(cv2.AKAZE_create(threshold=1e-4))
    detectors.append(cv2.ORB_create(nfeatures=3000))
    return detectors


def feature_initial(template: np.ndarray, image: np.ndarray, min_inliers: int = 15):
    """A rough homography template -> image from AKAZE (or ORB) matches + RANSAC, or None."""
    t8, i8 = _to_uint8(template), _to_uint8(image)
    for detector in _feature_detectors():
        kt, dt = detector.detectAndCompute(t8, None)
        ki, di = detector.detectAndCompute(i8, None)
        if dt is None or di is None or len(kt) < min_inliers or len(ki) < min_inliers:
            continue
        matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
        good = []
        for pair in matcher.knnMatch(dt, di, k=2):
            if len(pair) == 2 and pair[0].distance < 0.8 * pair[1].distance:
                good.append(pair[0])
        if len(good) < min_inliers:
            continue
        src = np.float32([kt[m.queryIdx].pt for m in good])
        dst = np.float32([ki[m.trainIdx].pt for m in good])
        threshold = 3.0 * max(1.0, image.shape[1] / template.shape[1])
        matrix, mask = cv2.findHomography(src, dst, cv2.RANSAC, threshold)
        if matrix is not None and int(mask.sum()) >= min_inliers:
            return matrix, int(mask.sum())
    return None


def prepare_target_free(tfp: np.ndarray, rgb_gray: np.ndarray, rgb_per_canonical: float):
    """The (template, image) pair ECC compares: the long TFP upsampled to the canonical grid, and the gray
    RGB frame blurred to the TFP's resolution (a 4x4 canonical box plus the bilinear upsampling)."""
    template = spike_to_canonical(tfp)
    sigma = max(2.0 * rgb_per_canonical, 0.5)
    image = cv2.GaussianBlur(np.asarray(rgb_gray, dtype=np.float32), (0, 0), sigma)
    return template, image


def align_exposure(
    tfp: np.ndarray,
    rgb_gray: np.ndarray,
    initial: np.ndarray,
    use_features: bool = True,
    min_texture: float = DEFAULT_MIN_TEXTURE,
    min_correlation: float = DEFAULT_MIN_CORRELATION,
) -> tuple[np.ndarray, float, str]:
    """Target-free homography of one exposure: (H canonical -> RGB, ECC correlation, how it started)."""
    texture = texture_strength(tfp)
    if texture < min_texture:
        raise CalibrationError(
            f"too little texture in the spike image (strength {texture:.4f} < {min_texture}); film a "
            "textured scene, or use a checkerboard"
        )
    scale = float(np.sqrt(abs(np.linalg.det(initial[:2, :2]))))
    template, image = prepare_target_free(tfp, rgb_gray, scale)
    start, how = initial, "prior"
    if use_features:
        found = feature_initial(template, image)
        if found is not None:
            start, how = found[0], f"features({found[1]} inliers)"
    try:
        matrix, correlation = align_ecc(template, image, start)
    except CalibrationError:
        if how == "prior":
            raise
        matrix, correlation = align_ecc(template, image, initial)  # a bad feature start: retry from the prior
        how = "prior"
    if correlation < min_correlation:
        raise CalibrationError(
            f"the spike and RGB images agree only to correlation {correlation:.3f} < {min_correlation} after "
            "alignment; the fit is not trustworthy (different views, strong lens distortion, or a clock offset "
            "so large that the two blurs differ: calibrate time first)"
        )
    return matrix, correlation, how


def _consensus(matrices: list[np.ndarray], canonical_shape) -> tuple[np.ndarray, np.ndarray]:
    """Homography through the per-point median of where each matrix sends a grid of canonical points,
    and each matrix's RMS deviation from it (canonical px)."""
    height, width = canonical_shape
    xs, ys = np.meshgrid(np.linspace(0, width - 1, 9), np.linspace(0, height - 1, 7))
    grid = np.c_[xs.ravel(), ys.ravel()]
    mapped = np.stack([project(m, grid) for m in matrices])
    matrix, _ = cv2.findHomography(grid, np.median(mapped, axis=0), 0)
    inverse = np.linalg.inv(matrix)
    deviation = np.array([np.sqrt(np.mean(np.sum((project(inverse, m) - grid) ** 2, axis=1))) for m in mapped])
    return check_homography(matrix), deviation


def fit_target_free(
    alignments: list[tuple[int, np.ndarray, float, str]],
    canonical_shape: tuple[int, int],
    tried: int,
    failures: list[str],
    max_residual_px: float = DEFAULT_MAX_RESIDUAL_PX,
    min_exposures: int = 2,
) -> GeometryCalibration:
    """Combine per-exposure alignments ``(exposure, H, correlation, start)`` into one homography."""
    if len(alignments) < min_exposures:
        reasons = "; ".join(sorted(set(failures))) or "too few exposures"
        raise CalibrationError(
            f"target-free alignment succeeded on {len(alignments)} of {tried} exposure(s), at least "
            f"{min_exposures} are needed for a checked fit: {reasons}"
        )
    matrices = [a[1] for a in alignments]
    matrix, deviation = _consensus(matrices, canonical_shape)
    keep = deviation <= max(3.0 * float(np.median(deviation)), 0.25)
    if keep.sum() >= min_exposures and not keep.all():
        matrix, deviation_kept = _consensus([m for m, k in zip(matrices, keep) if k], canonical_shape)
        deviation = np.where(keep, 0.0, deviation)
        deviation[keep] = deviation_kept
    kept = [a for a, k in zip(alignments, keep) if k]
    residual = float(np.sqrt(np.mean(deviation[keep] ** 2)))
    details = {
        "exposures_tried": tried,
        "correlations": [round(a[2], 5) for a in kept],
        "starts": sorted({a[3].split("(")[0] for a in kept}),
        "rejected_exposures": [a[0] for a, k in zip(alignments, keep) if not k],
    }
    result = GeometryCalibration(matrix, "features", residual, int(keep.sum()), len(alignments),
                                 tuple(a[0] for a in kept), details)
    if residual > max_residual_px:
        raise CalibrationError(
            f"the per-exposure alignments disagree by {residual:.2f} px RMS on the canonical grid (> "
            f"{max_residual_px} px); the fit is not trustworthy (moving objects, too little texture, or a "
            "clock offset: calibrate time first, or use a checkerboard)"
        )
    return result


# -- checking by eye ------------------------------------------------------------------------------------
def overlay_image(tfp: np.ndarray, rgb_on_canonical: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) BGR for a PNG: the spike image (gray, canonical grid) with the edges of the warped
    RGB frame in red. Aligned rigs show red lines exactly on the gray edges."""
    spike = spike_to_canonical(tfp) if tfp.shape != rgb_on_canonical.shape[-2:] else tfp
    base = _to_uint8(np.asarray(spike, dtype=np.float32))
    smooth = cv2.GaussianBlur(_to_uint8(gray(rgb_on_canonical)), (0, 0), 2.0)
    magnitude = np.hypot(cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1))
    low, high = np.percentile(magnitude, (85, 95))  # only the strongest edges, whatever the contrast
    edges = cv2.Canny(smooth, float(low), float(max(high, low + 1)), L2gradient=True) > 0
    out = np.repeat(base[:, :, None], 3, axis=2)
    out[edges] = (0, 0, 255)
    return out
