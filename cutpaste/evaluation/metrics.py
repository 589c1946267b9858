"""Image-level detection metrics, computed with scikit-learn."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score


@dataclass
class ImageMetrics:
    image_auroc: float
    aupr: float
    f1_max: float
    # Score at which F1 peaks on this split: a reference, not the bundle's calibrated threshold.
    f1_threshold: float
    per_defect_auroc: dict[str, float] = field(default_factory=dict)
    num_good: int = 0
    num_defective: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Best F1 over all thresholds and the threshold that reaches it (``score >= t`` is anomalous)."""
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1[:-1])) if len(thresholds) else 0
    return float(f1[best]), float(thresholds[best]) if len(thresholds) else float("nan")


def image_metrics(labels: Sequence[int], scores: Sequence[float], defect_types: Sequence[str]) -> ImageMetrics:
    """``labels`` 0 good / 1 defective, ``scores`` larger = more anomalous, ``defect_types`` per sample.

    Per-defect AUROC is good-vs-that-defect, as MVTec papers report it.
    """
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    kinds = np.asarray(defect_types)
    if not (len(y) == len(s) == len(kinds)):
        raise ValueError(f"labels, scores and defect_types differ in length: {len(y)}, {len(s)}, {len(kinds)}")
    if not np.isfinite(s).all():
        raise ValueError(f"{int((~np.isfinite(s)).sum())} anomaly scores are not finite")
    if y.min(initial=1) != 0 or y.max(initial=0) != 1:
        raise ValueError("image metrics need both good (0) and defective (1) samples")
    best_f1, threshold = f1_max(y, s)
    per_defect = {}
    good = y == 0
    for defect in sorted(set(kinds[y == 1])):
        pick = good | (kinds == defect)
        per_defect[str(defect)] = float(roc_auc_score(y[pick], s[pick]))
    return ImageMetrics(
        image_auroc=float(roc_auc_score(y, s)),
        aupr=float(average_precision_score(y, s)),
        f1_max=best_f1,
        f1_threshold=threshold,
        per_defect_auroc=per_defect,
        num_good=int(good.sum()),
        num_defective=int((~good).sum()),
    )
