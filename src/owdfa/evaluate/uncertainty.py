"""Uncertainty of attribution models: MC dropout and occlusion maps (calibration: `owdfa.evaluate.calibration`).

* MC dropout (Gal & Ghahramani 2016): the model's only dropout sits in the head, between the BNNeck
  features and the prototype classifier, so the backbone runs once per batch and the `passes`
  stochastic forward passes only re-mask the features. Uncertainties are in nats (natural log):
  predictive entropy H[E p] = aleatoric E[H p] (expected entropy) + epistemic (mutual information).
* Occlusion sensitivity of the MC-dropout predictive uncertainty (Zeiler & Fergus 2014 occlusion
  applied to the MC-dropout entropy): per-pixel maps of which image regions the uncertainty depends on.

Dropout masks are drawn from a CPU `torch.Generator` re-seeded per sample from ``(seed, key)`` where
the key is the sample's cache row, so a sample's result depends only on the seed and its own row:
not on the batch size, the other rows requested, their order or the device.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import nn

from owdfa.core.arguments import check_positive_int
from owdfa.core.devices import autocast, batch_images

__all__ = [
    "OCCLUSION_FILL",
    "McDropout",
    "mc_dropout_predict",
    "occlusion_uncertainty_maps",
    "uncertainty_summary",
]

# ImageNet mean colour (0.485, 0.456, 0.406) * 255, rounded: after the model's normalisation the patch is
# ~0 in every channel, i.e. "no evidence" rather than a black or white patch the backbone could react to.
OCCLUSION_FILL = (124, 116, 104)


# --------------------------------------------------------------------------------------------------
# MC dropout
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class McDropout:
    """MC-dropout predictions for N samples over C active prototypes; entropies in nats."""

    mean_probs: np.ndarray  # N x C, softmax averaged over passes
    predictive_entropy: np.ndarray  # N, H[mean probs]
    aleatoric: np.ndarray  # N, mean over passes of H[probs of the pass]
    epistemic: np.ndarray  # N, mutual information = predictive - aleatoric, clipped at 0
    confidence: np.ndarray  # N, max of mean probs
    pred: np.ndarray  # N, argmax of mean probs (int64)
    passes: int
    dropout_p: float

    def __len__(self) -> int:
        return int(self.pred.shape[0])


def _dropout_p(model: nn.Module) -> float:
    """The head's dropout rate, read from the model so the analysis matches what training used."""
    p = float(model.dropout.p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"model dropout p must be within [0, 1], got {p}")
    return p


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _keep_masks(seed: int, keys: np.ndarray, passes: int, dim: int, p: float) -> torch.Tensor:
    """Boolean keep masks (passes x len(keys) x dim), one independent stream per ``(seed, key)``.

    Re-seeding per key (via `numpy.random.SeedSequence`, which decorrelates nearby integers) is what
    makes a sample's masks independent of the batch it happens to be in.
    """
    masks = torch.empty((passes, len(keys), dim), dtype=torch.bool)
    if p == 0.0:
        return masks.fill_(True)
    gen = torch.Generator()
    for j, key in enumerate(keys):
        state = np.random.SeedSequence((seed, int(key))).generate_state(2, np.uint32)
        gen.manual_seed(int(state[0]) << 32 | int(state[1]))
        masks[:, j] = torch.rand((passes, dim), generator=gen) >= p
    return masks


def _pass_log_probs(model: nn.Module, features: torch.Tensor, keep: torch.Tensor, p: float) -> torch.Tensor:
    """Log-softmax (passes x B x C, float64, CPU) of the classifier on inverted-dropout-masked features.

    Identical to the head's `nn.Dropout` in train mode (zero with prob. p, scale the rest by 1/(1-p)),
    but with our masks; `model.classify` runs in eval mode so its own dropout is the identity.
    """
    scale = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)
    keep = keep.to(features.device, non_blocking=True)
    masked = features.unsqueeze(0) * keep.to(features.dtype) * scale  # passes x B x D
    passes, b, d = masked.shape
    logits = model.classify(masked.reshape(passes * b, d)).float()
    return logits.reshape(passes, b, -1).double().log_softmax(-1).cpu()


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats over the last axis, with 0 log 0 = 0."""
    return -torch.special.xlogy(probs, probs).sum(-1)


def _summarise(log_probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean probabilities and the entropy decomposition for passes x B x C log-probabilities."""
    probs = log_probs.exp()
    mean_probs = probs.mean(0)
    predictive = _entropy(mean_probs)
    aleatoric = (-(probs * log_probs).sum(-1)).mean(0)
    return {
        "mean_probs": mean_probs,
        "predictive_entropy": predictive,
        "aleatoric": aleatoric,
        "epistemic": (predictive - aleatoric).clamp_min(0.0),
    }


def _head_features(model: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    with autocast(device):
        return model.forward_maps(x)["features"].float()


class _EvalMode:
    """Put the model in eval mode for the analysis and give it back in the mode it came in."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.was_training = model.training

    def __enter__(self) -> nn.Module:
        return self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


@torch.no_grad()
def mc_dropout_predict(
    model: nn.Module,
    images: np.ndarray,
    rows: ArrayLike,
    passes: int,
    batch_size: int,
    device: torch.device,
    seed: int,
) -> McDropout:
    """MC-dropout predictions for ``images[rows]`` (uint8 NHWC cache), head-only re-masking.

    Backbone and BNNeck run once per batch in eval mode; only the head dropout is stochastic, which is
    exactly MC dropout for this architecture at 1/passes of the cost. Masks are keyed by the cache row
    (see the module docstring), so results depend on ``seed`` and the rows, never on ``batch_size``.
    """
    passes = check_positive_int(passes, "passes")
    batch_size = check_positive_int(batch_size, "batch_size")
    seed = _check_seed(seed)
    rows_arr = np.asarray(rows)
    if rows_arr.ndim != 1 or (rows_arr.size and not np.issubdtype(rows_arr.dtype, np.integer)):
        raise ValueError(f"rows must be a 1-D integer array, got shape {rows_arr.shape} and dtype {rows_arr.dtype}")
    p = _dropout_p(model)
    num_active = int(model.num_active)
    chunks: list[dict[str, torch.Tensor]] = []
    with _EvalMode(model):
        for start in range(0, len(rows_arr), batch_size):
            batch_rows = rows_arr[start : start + batch_size]
            features = _head_features(model, batch_images(images, batch_rows, device), device)
            keep = _keep_masks(seed, batch_rows, passes, features.shape[1], p)
            chunks.append(_summarise(_pass_log_probs(model, features, keep, p)))
    if chunks:
        out = {k: torch.cat([c[k] for c in chunks]).numpy() for k in chunks[0]}
    else:
        out = {k: np.zeros((0,)) for k in ("predictive_entropy", "aleatoric", "epistemic")}
        out["mean_probs"] = np.zeros((0, num_active))
    mean_probs = out["mean_probs"]
    return McDropout(
        mean_probs=mean_probs,
        predictive_entropy=out["predictive_entropy"],
        aleatoric=out["aleatoric"],
        epistemic=out["epistemic"],
        confidence=mean_probs.max(axis=1) if len(mean_probs) else np.zeros((0,)),
        pred=mean_probs.argmax(axis=1).astype(np.int64) if len(mean_probs) else np.zeros((0,), dtype=np.int64),
        passes=passes,
        dropout_p=p,
    )


# --------------------------------------------------------------------------------------------------
# occlusion sensitivity of MC-dropout uncertainty
# --------------------------------------------------------------------------------------------------
def _window_starts(size: int, window: int, stride: int) -> list[int]:
    """Top-left offsets along one axis; a final flush window is added so the far edge is covered too."""
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def _batched(items: list[tuple[int, int] | None], size: int) -> Iterator[list[tuple[int, int] | None]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True)
class Occlusion:
    """The occluding patch of `occlusion_uncertainty_maps`: `window` x `window` pixels, moved `stride` at a time."""

    window: int
    stride: int

    def __post_init__(self) -> None:
        check_positive_int(self.window, "window")
        check_positive_int(self.stride, "stride")


@torch.no_grad()
def occlusion_uncertainty_maps(
    model: nn.Module,
    image: np.ndarray,
    occlusion: Occlusion,
    passes: int,
    device: torch.device,
    seed: int,
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Occlusion sensitivity of the MC-dropout uncertainty of one uint8 HWC image.

    A ``window`` x ``window`` patch of `OCCLUSION_FILL` slides with ``stride`` pixels (plus a flush
    last window per axis; `occlusion`); each occluded copy gets MC dropout. Returns H x W float32 maps, a pixel
    being the mean over the windows that cover it of:

    * ``entropy_delta``: predictive entropy of the occluded copy minus that of the original (nats);
      > 0 where hiding the region makes the model less sure, i.e. where its evidence lies;
    * ``epistemic``: mutual information (nats) of the occluded copy.

    Every copy and the original share one set of dropout masks (common random numbers, those of key 0,
    so the baseline equals `mc_dropout_predict` of the image as row 0 with the same seed): a delta then
    reflects the occlusion alone, not Monte Carlo noise.
    """
    passes = check_positive_int(passes, "passes")
    window, stride = occlusion.window, occlusion.stride
    batch_size = check_positive_int(batch_size, "batch_size")
    seed = _check_seed(seed)
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be uint8 H x W x 3, got shape {img.shape} and dtype {img.dtype}")
    height, width = img.shape[:2]
    if window > min(height, width):
        raise ValueError(f"window {window} exceeds the image size {height}x{width}")
    p = _dropout_p(model)

    base = batch_images(img[None], np.array([0]), device)  # 1 x 3 x H x W uint8
    fill = torch.tensor(OCCLUSION_FILL, dtype=torch.uint8, device=device).view(3, 1, 1)
    positions = [(y, x) for y in _window_starts(height, window, stride) for x in _window_starts(width, window, stride)]
    keep: torch.Tensor | None = None
    entropy_sum = np.zeros((height, width), dtype=np.float64)
    epistemic_sum = np.zeros((height, width), dtype=np.float64)
    cover = np.zeros((height, width), dtype=np.float64)
    baseline: float | None = None
    with _EvalMode(model):
        # the original rides along as the first image of the first batch
        for chunk in _batched([None, *positions], batch_size):
            x = base.expand(len(chunk), -1, -1, -1).clone()
            for i, pos in enumerate(chunk):
                if pos is not None:
                    x[i, :, pos[0] : pos[0] + window, pos[1] : pos[1] + window] = fill
            features = _head_features(model, x, device)
            if keep is None:
                keep = _keep_masks(seed, np.array([0]), passes, features.shape[1], p)
            stats = _summarise(_pass_log_probs(model, features, keep, p))
            entropy = stats["predictive_entropy"].numpy()
            epistemic = stats["epistemic"].numpy()
            for i, pos in enumerate(chunk):
                if pos is None:
                    baseline = float(entropy[i])
                    continue
                region = (slice(pos[0], pos[0] + window), slice(pos[1], pos[1] + window))
                entropy_sum[region] += entropy[i]
                epistemic_sum[region] += epistemic[i]
                cover[region] += 1.0
    assert baseline is not None and cover.min() > 0  # the first chunk holds the original; windows tile the image
    return {
        "entropy_delta": (entropy_sum / cover - baseline).astype(np.float32),
        "epistemic": (epistemic_sum / cover).astype(np.float32),
    }


# --------------------------------------------------------------------------------------------------
# report summaries
# --------------------------------------------------------------------------------------------------
def _group_stats(mc: McDropout, mask: np.ndarray) -> dict[str, float | int | None]:
    count = int(mask.sum())

    def mean(values: np.ndarray) -> float | None:
        return float(values[mask].mean()) if count else None

    return {
        "count": count,
        "confidence": mean(mc.confidence),
        "predictive_entropy": mean(mc.predictive_entropy),
        "aleatoric": mean(mc.aleatoric),
        "epistemic": mean(mc.epistemic),
    }


def uncertainty_summary(mc: McDropout, known_mask: ArrayLike) -> dict[str, float | int | None]:
    """Flat JSON-ready means per group (``all_*``, ``known_*``, ``novel_*``) plus ``confidence_gap``.

    The known-minus-novel confidence gap is the skew CAL sets out to fix. An empty group gives None,
    never NaN, so the dict stays valid JSON for DVC metrics.
    """
    known = np.asarray(known_mask)
    if known.dtype != np.bool_:
        raise ValueError(f"known_mask must be boolean, got dtype {known.dtype}")
    if known.shape != (len(mc),):
        raise ValueError(f"known_mask must have shape ({len(mc)},), got {known.shape}")
    out: dict[str, float | int | None] = {"passes": mc.passes, "dropout_p": mc.dropout_p}
    for group, mask in (("all", np.ones_like(known)), ("known", known), ("novel", ~known)):
        out.update({f"{group}_{k}": v for k, v in _group_stats(mc, mask).items()})
    k_conf, n_conf = out["known_confidence"], out["novel_confidence"]
    out["confidence_gap"] = None if k_conf is None or n_conf is None else k_conf - n_conf
    return out
