"""Decoding one image file and finding, cropping or aligning the face in it (dlib).

Used per image by the align stage (in worker processes) and by single-image attribution:

    aligner = FaceAligner("crop", 256)
    face = aligner(decode_rgb(path))        # AlignedFace(image=uint8 256x256x3, found, score, box)

Modes:

* ``resize``  - no detection: the whole image squashed to image_size x image_size (bilinear,
  PIL). For inputs that are face crops already (the synthetic benchmark).
* ``crop``    - CAL / OW-DFA parity: dlib's HOG frontal detector (``detector.run(img, upsample,
  threshold)``), the highest-scoring box, enlarged by ``margin`` (1.2 adds 10 % of the box's
  width/height on each side), clipped to the image, an axis-aligned crop (no rotation), squashed
  to image_size x image_size with PIL's bilinear filter, as CAL's torchvision Resize does.
* ``aligned`` - the same box, then dlib's 68-landmark predictor and a similarity transform
  (rotation, uniform scale, shift; dlib fits it and resamples with ``extract_image_chip``) that
  puts the two eye centres (the mean of landmarks 36-41 and of 42-47) exactly on the template's
  eye positions, so faces come out upright with the eyes level. See `template_eyes`. The template
  is dlib's own mean face, so the framing equals `dlib.get_face_chip(img, shape, size, padding)`'s;
  that function fits dozens of landmarks by least squares, which leaves the eyes of a face whose
  proportions differ from the mean 3-5 px (at 256 px) off the template (the astronaut: 4.9 px);
  two points fit exactly. The price: the scale follows the eye distance, so a turned head comes
  out somewhat larger (the frontal detector only fires up to moderate yaw anyway).

When no face is found, the whole image is resized instead and ``found`` is False (CAL passes the
whole image on silently; we pass it on too but flag it).
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import dlib
import numpy as np
from PIL import Image, ImageOps

from owdfa.core.errors import DataError
from owdfa.data.face_preprocessing import MODES, FacePreprocessing

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"

# Eye centres of dlib's mean face shape (the template `dlib.get_face_chip` fits to; dlib's
# image_transforms/interpolation.h), each the mean of its six eye landmarks, in the unit frame in
# which that mean face spans [0, 1] from the outer eyebrow ends (x) and from the top of the eyebrows
# (y). Image-left eye (the subject's right eye, landmarks 36-41) first.
TEMPLATE_EYES_UNIT = ((0.225492, 0.215990), (0.754762, 0.215990))


def template_eyes(image_size: int, padding: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """Pixel positions (x, y) of the left and right eye centres in an aligned image.

    A unit-frame point u lands at (padding + u) / (1 + 2 * padding) * image_size, as in
    `dlib.get_face_chip(img, shape, image_size, padding)`: at 256 px and padding 0.25 the eyes land
    at (81.2, 79.5) and (171.5, 79.5), 90.3 px apart.
    """
    scale = image_size / (1 + 2 * padding)
    (lx, ly), (rx, ry) = TEMPLATE_EYES_UNIT
    return ((padding + lx) * scale, (padding + ly) * scale), ((padding + rx) * scale, (padding + ry) * scale)


def bundled_predictor_path() -> Path | None:
    """face_recognition_models' copy of the 68-landmark model, found without importing the package.

    (Importing it fails under setuptools >= 81, which dropped pkg_resources.)
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / PREDICTOR_FILE
    return path if path.is_file() else None


# --------------------------------------------------------------------------------------------
# Decoding


_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB of any PIL mode. 16-bit grey is scaled by 255/65535 (not by its own maximum).

    Alpha (RGBA, LA, PA) is dropped, keeping the colour stored under transparent pixels, as
    OpenCV's ``imread(IMREAD_COLOR)`` in CAL does. CMYK (also Adobe's inverted JPEGs), grey (L, 1)
    and palette (P) images go through PIL's own conversion.
    """
    if img.mode in _SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if img.mode == "RGB":
        return img
    return img.convert("RGB")


def _exif_upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (OpenCV's imread does too); a broken EXIF block is ignored."""
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception:  # EXIF is optional metadata, never a reason to drop the image
        return img
    return img if upright is None else upright


def decode_rgb(path: Path) -> np.ndarray:
    """Decode an image file to full-resolution RGB uint8 (H x W x 3).

    Raises DataError naming the file for anything that is not a decodable image: an empty,
    truncated or corrupt file, a non-image with an image suffix, an unsupported mode, or a
    decompression bomb (more than PIL's ``Image.MAX_IMAGE_PIXELS``; its warning is an error here).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", message="Palette images with Transparency")
            with Image.open(path) as img:
                img.load()
                rgb = _to_rgb(_exif_upright(img))
                array = np.asarray(rgb, dtype=np.uint8)
    except Exception as exc:  # every decoder failure means "unreadable", never a crash
        reason = str(exc) or type(exc).__name__
        raise DataError(f"{path}: unreadable image ({reason})") from None
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"{path}: unreadable image (decoded to shape {array.shape})")
    return np.ascontiguousarray(array)


def resize_rgb(rgb: np.ndarray, image_size: int) -> np.ndarray:
    """Squash to image_size x image_size with PIL's bilinear filter (aspect ratio not kept)."""
    if rgb.shape[:2] == (image_size, image_size):
        return rgb
    img = Image.fromarray(rgb).resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(img, dtype=np.uint8)


def load_rgb(path: Path, size: int) -> np.ndarray:
    """Decode any PIL-readable image to size x size RGB uint8 (mode `resize`)."""
    return resize_rgb(decode_rgb(path), size)


# --------------------------------------------------------------------------------------------
# Detection and alignment


@dataclass(frozen=True)
class AlignedFace:
    """One processed image: `image` is uint8 image_size x image_size x 3.

    `found` is False when no face was detected (or in mode resize, which does not look);
    `score` is the detector's score of the kept box and `box` that box (left, top, right, bottom;
    right/bottom exclusive) in the input's pixels, both None without a detection.
    """

    image: np.ndarray
    found: bool
    score: float | None = None
    box: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class FaceSettings:
    """Everything a worker process needs to build its own FaceAligner (picklable): the face settings
    (the one type of them, `FacePreprocessing`) and, in mode aligned, the landmark model's file."""

    preprocessing: FacePreprocessing
    predictor_path: str | None = None

    @property
    def mode(self) -> str:
        return self.preprocessing.mode


class FaceAligner:
    """Detect, crop or align the face of one RGB image at a time (see the module docstring).

    dlib's detector and predictor are created once, here: build one aligner per process.
    """

    def __init__(
        self,
        mode: str,
        image_size: int,
        upsample: int = 0,
        threshold: float = 0.0,
        margin: float = 1.2,
        padding: float = 0.25,
        predictor_path: str | Path | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if image_size < 1 or upsample < 0 or margin < 1.0 or padding < 0.0:
            raise ValueError("need image_size >= 1, upsample >= 0, margin >= 1 and padding >= 0")
        self.mode = mode
        self.image_size = int(image_size)
        self.upsample = int(upsample)
        self.threshold = float(threshold)
        self.margin = float(margin)
        self.padding = float(padding)
        self._detector = dlib.get_frontal_face_detector() if mode != "resize" else None
        self._predictor = None
        self.predictor_path: Path | None = None
        if mode == "aligned":
            path = Path(predictor_path) if predictor_path is not None else bundled_predictor_path()
            if path is None or not path.is_file():
                raise FileNotFoundError(f"68-landmark predictor not found: {path or PREDICTOR_FILE}")
            self.predictor_path = path
            self._predictor = dlib.shape_predictor(str(path))  # RuntimeError if not a predictor file
            left, right = template_eyes(self.image_size, self.padding)
            self._template = dlib.dpoints([dlib.dpoint(*left), dlib.dpoint(*right)])
            self._dims = dlib.chip_dims(self.image_size, self.image_size)

    @classmethod
    def from_settings(cls, settings: FaceSettings) -> FaceAligner:
        p = settings.preprocessing
        return cls(p.mode, p.image_size, p.upsample, p.threshold, p.margin, p.padding, settings.predictor_path)

    def detect(self, rgb: np.ndarray) -> tuple[dlib.rectangle, float] | None:
        """The highest-scoring detection (the first of equal scores), or None."""
        if self._detector is None:
            raise ValueError("mode 'resize' does not detect faces")
        rects, scores, _ = self._detector.run(rgb, self.upsample, self.threshold)
        if len(rects) == 0:
            return None
        best = max(range(len(rects)), key=lambda i: (scores[i], -i))
        return rects[best], float(scores[best])

    def landmarks(self, rgb: np.ndarray, rect: dlib.rectangle) -> np.ndarray:
        """The 68 landmarks (x, y) inside a detection box, as a 68 x 2 float array (mode aligned)."""
        if self._predictor is None:
            raise ValueError("landmarks need mode 'aligned'")
        shape = self._predictor(rgb, rect)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)

    def __call__(self, rgb: np.ndarray) -> AlignedFace:
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 RGB image, got shape {rgb.shape}")
        if self.mode == "resize":
            return AlignedFace(resize_rgb(rgb, self.image_size), found=False)
        hit = self.detect(rgb)
        if hit is None:
            return AlignedFace(resize_rgb(rgb, self.image_size), found=False)
        rect, score = hit
        box = (rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1)
        image = self._crop(rgb, box) if self.mode == "crop" else self._align(rgb, rect)
        if image is None:  # the box lies outside the image after clipping: treat as no face
            return AlignedFace(resize_rgb(rgb, self.image_size), found=False)
        return AlignedFace(image, found=True, score=score, box=box)

    def crop_box(self, box: tuple[int, int, int, int], width: int, height: int) -> tuple[int, int, int, int]:
        """The detection box enlarged by `margin` (half the growth on each side), clipped to the image."""
        left, top, right, bottom = box
        grow_x = (self.margin - 1.0) * (right - left) / 2.0
        grow_y = (self.margin - 1.0) * (bottom - top) / 2.0
        return (
            max(0, math.floor(left - grow_x)),
            max(0, math.floor(top - grow_y)),
            min(width, math.ceil(right + grow_x)),
            min(height, math.ceil(bottom + grow_y)),
        )

    def _crop(self, rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray | None:
        left, top, right, bottom = self.crop_box(box, rgb.shape[1], rgb.shape[0])
        if right <= left or bottom <= top:
            return None
        return resize_rgb(np.ascontiguousarray(rgb[top:bottom, left:right]), self.image_size)

    def _align(self, rgb: np.ndarray, rect: dlib.rectangle) -> np.ndarray:
        points = self.landmarks(rgb, rect)
        left_eye, right_eye = points[36:42].mean(axis=0), points[42:48].mean(axis=0)
        source = dlib.dpoints([dlib.dpoint(*left_eye), dlib.dpoint(*right_eye)])
        chip = dlib.chip_details(self._template, source, self._dims)
        return np.ascontiguousarray(dlib.extract_image_chip(rgb, chip), dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# Per-file work for the align stage's worker processes (kept here: a spawned child then imports
# only numpy, PIL and dlib, not pandas)

# (job index, image or None, face found, detector score, why the file was skipped)
Result = tuple[int, np.ndarray | None, bool, float | None, str | None]


class AlignerSetupError(RuntimeError):
    """dlib could not build an aligner (the predictor file is missing or not a dlib model)."""


class ImageWorker:
    """Decode one file and process its face; unreadable files become a result with a reason, never an error."""

    def __init__(self, settings: FaceSettings) -> None:
        try:
            self.aligner = FaceAligner.from_settings(settings)
        except (RuntimeError, OSError) as exc:
            raise AlignerSetupError(f"cannot load the landmark predictor {settings.predictor_path}: {exc}") from None

    def __call__(self, job: tuple[int, str]) -> Result:
        index, path = job
        try:
            rgb = decode_rgb(Path(path))
        except DataError as exc:
            return index, None, False, None, str(exc)
        face = self.aligner(rgb)
        return index, face.image, face.found, face.score, None


_WORKER: ImageWorker | None = None
_SETUP_ERROR: str | None = None


def init_worker(settings: FaceSettings) -> None:
    """Process-pool initializer: one aligner per process. A failure is kept and reported by the
    first job (an initializer that raises would only show as a broken pool)."""
    global _WORKER, _SETUP_ERROR
    try:
        _WORKER = ImageWorker(settings)
    except AlignerSetupError as exc:
        _SETUP_ERROR = str(exc)


def run_job(job: tuple[int, str]) -> Result:
    if _WORKER is None:
        raise AlignerSetupError(_SETUP_ERROR or "worker process not initialised")
    return _WORKER(job)
