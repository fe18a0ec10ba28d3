"""How strong a network's features are before any method trains on them: a nearest-class-mean probe.

The regime study (docs/regime-study.md, "Where does CAL's lead come from?") compares starting points — none, a
short or long supervised warm-up, SimCLR — by one number that needs no classifier, so it applies
to each: the known-class accuracy on the labelled validation split when each image goes to the
class whose mean feature (over the labelled training images, L2-normalised features) is nearest
in cosine. Labelled rows only: the unlabelled and test labels are never read.
"""

from __future__ import annotations

import numpy as np

from owdfa.core.devices import pick_device
from owdfa.models import AttributionModel
from owdfa.models.inference import predict
from owdfa.train.config import TrainConfig, TrainData


def nearest_mean_accuracy(
    train_features: np.ndarray, train_targets: np.ndarray, val_features: np.ndarray, val_targets: np.ndarray
) -> float:
    """Accuracy of assigning each validation feature to the nearest normalised class mean (cosine)."""

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    train, val = unit(train_features.astype(np.float64)), unit(val_features.astype(np.float64))
    classes = np.unique(train_targets)
    means = unit(np.stack([train[train_targets == c].mean(axis=0) for c in classes]))
    predicted = classes[np.argmax(val @ means.T, axis=1)]
    return float((predicted == val_targets).mean())


def feature_probe(model: AttributionModel, data: TrainData, config: TrainConfig) -> float | None:
    """`nearest_mean_accuracy` of the model's BNNeck features (eval mode); None without validation rows."""
    if len(data.val_rows) == 0 or len(data.labelled_rows) == 0:
        return None
    device = pick_device(config.device)
    model = model.to(device)
    _, train_features, _ = predict(
        model, data.images, data.labelled_rows, config.eval_batch_size, device, config.precision
    )
    _, val_features, _ = predict(model, data.images, data.val_rows, config.eval_batch_size, device, config.precision)
    model.cpu()
    return nearest_mean_accuracy(
        train_features, np.asarray(data.labelled_targets), val_features, np.asarray(data.val_targets)
    )
