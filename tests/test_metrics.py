import pytest

from cutpaste.evaluation.metrics import f1_max, image_metrics


def test_perfect_and_hand_computed_cases():
    m = image_metrics([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], ["good", "good", "a", "b"])
    assert m.image_auroc == 1.0 and m.aupr == 1.0 and m.f1_max == 1.0
    assert m.f1_threshold == 0.8
    assert m.per_defect_auroc == {"a": 1.0, "b": 1.0}
    # One inversion out of 2x2 pairs: AUROC 3/4. Defect "a" sits below one good image.
    m = image_metrics([0, 0, 1, 1], [0.1, 0.5, 0.3, 0.9], ["good", "good", "a", "b"])
    assert m.image_auroc == pytest.approx(0.75)
    assert m.per_defect_auroc == {"a": 0.5, "b": 1.0}
    assert (m.num_good, m.num_defective) == (2, 2)


def test_f1_max_threshold():
    # Thresholding at 0.4 flags {0.4, 0.6, 0.9}: 2 TP, 1 FP, 0 FN -> F1 = 0.8.
    best, threshold = f1_max([0, 0, 1, 1], [0.1, 0.4, 0.6, 0.9])
    assert best == pytest.approx(1.0) and threshold == pytest.approx(0.6)
    best, threshold = f1_max([0, 1, 0, 1], [0.1, 0.4, 0.6, 0.9])
    assert best == pytest.approx(0.8) and threshold == pytest.approx(0.4)


def test_needs_both_classes_and_finite_scores():
    with pytest.raises(ValueError, match="both"):
        image_metrics([0, 0], [0.1, 0.2], ["good", "good"])
    with pytest.raises(ValueError, match="not finite"):
        image_metrics([0, 1], [0.1, float("nan")], ["good", "a"])
