"""The rule a default is decided by (docs/decisions.md), as code: paired over seeds and categories.

An option replaces the simpler (or the incumbent) choice only when, over at least ``MIN_SEEDS`` seeds on
every development category,

1. its mean validation gain has a 95 % paired-bootstrap interval above zero (categories resampled, then
   seeds within each), and
2. no category loses on average by more than its own seed-to-seed spread (the standard deviation of the
   baseline's validation AUROC over seeds).

A category that already has ``MIN_SEEDS`` seeds and loses by more than its spread settles the question
before the others are measured: condition 2 can no longer hold, so the simpler choice stays ("keep").

Test AUROC deltas are carried beside the decision for the record and never read by it.

A candidate of ``image_score=auto``'s list is the exception (:func:`list_verdict`): the candidates stand
in for each other, so leaving one out moves validation by less than its noise although the list as a
whole won. A candidate stays in the list when leaving it out lowered mean validation over the same seeds
and categories, and leaves it otherwise.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import asdict, dataclass

MIN_SEEDS = 3
BOOTSTRAP = 10_000


@dataclass
class Decision:
    option: str
    baseline: str
    seeds: dict[str, int]  # category -> paired seeds
    val_delta: float
    val_low: float
    val_high: float
    per_category: dict[str, float]  # mean validation delta per category
    spread: dict[str, float]  # the baseline's seed-to-seed standard deviation per category
    test_delta: float | None
    verdict: str  # "adopt", "keep", or "undecided: ..." (too few seeds)
    missing: list[str]  # categories of the preset's runs with no paired seed of the two rows

    def to_dict(self) -> dict:
        return asdict(self)


def paired_bootstrap(deltas: dict[str, list[float]], *, samples: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """95 % interval of the mean delta: resample categories with replacement, then each one's seeds."""
    rng = random.Random(seed)
    categories = sorted(deltas)
    means = []
    for _ in range(samples):
        drawn = [rng.choice(categories) for _ in categories]
        values = [v for c in drawn for v in rng.choices(deltas[c], k=len(deltas[c]))]
        means.append(statistics.fmean(values))
    means.sort()
    return means[int(0.025 * samples)], means[min(samples - 1, int(0.975 * samples))]


def decide(
    option: str,
    baseline: str,
    val: dict[str, dict[int, dict[str, float]]],
    test: dict[str, dict[int, dict[str, float]]] | None = None,
) -> Decision:
    """``val[category][seed][row]`` validation AUROCs (``test`` the same for test AUROCs, reported only)
    -> whether ``option`` replaces ``baseline`` under the rule in this module's docstring."""
    deltas: dict[str, list[float]] = {}
    spread: dict[str, float] = {}
    for category, by_seed in sorted(val.items()):
        paired = [s for s in sorted(by_seed) if option in by_seed[s] and baseline in by_seed[s]]
        if paired:
            deltas[category] = [by_seed[s][option] - by_seed[s][baseline] for s in paired]
            base = [by_seed[s][baseline] for s in paired]
            spread[category] = statistics.stdev(base) if len(base) > 1 else 0.0
    if not deltas:
        raise ValueError(f"no seed has both {option!r} and {baseline!r}")
    low, high = paired_bootstrap(deltas)
    per_category = {c: statistics.fmean(d) for c, d in deltas.items()}
    mean = statistics.fmean(v for d in deltas.values() for v in d)
    seeds = {c: len(d) for c, d in deltas.items()}
    missing = sorted(c for c in val if c not in deltas)
    settled = [c for c in per_category if seeds[c] >= MIN_SEEDS]
    if any(per_category[c] < -spread[c] for c in settled):
        verdict = "keep"  # condition 2 fails whatever the unmeasured categories do
    elif min(seeds.values()) < MIN_SEEDS or missing:
        verdict = _undecided(seeds)
    elif low > 0:
        verdict = "adopt"
    else:
        verdict = "keep"
    return Decision(
        option=option,
        baseline=baseline,
        seeds=seeds,
        val_delta=mean,
        val_low=low,
        val_high=high,
        per_category=per_category,
        spread=spread,
        test_delta=_test_delta(option, baseline, test) if test else None,
        verdict=verdict,
        missing=missing,
    )


def _undecided(seeds: dict[str, int]) -> str:
    return f"undecided: {min(seeds.values())} paired seeds (need {MIN_SEEDS} on every category)"


def list_verdict(d: Decision) -> str:
    """The verdict of "candidate in auto's list vs the list without it": "adopt" (it stays) when leaving
    it out lowered mean validation, else "keep" (the list without it); too few seeds, or a category not
    measured (the mean must cover them all), stay undecided."""
    if d.missing or min(d.seeds.values()) < MIN_SEEDS:
        return _undecided(d.seeds)
    return "adopt" if d.val_delta > 0 else "keep"


def _test_delta(option: str, baseline: str, test: dict[str, dict[int, dict[str, float]]]) -> float | None:
    values = [
        rows[option] - rows[baseline]
        for by_seed in test.values()
        for rows in by_seed.values()
        if option in rows and baseline in rows
    ]
    return statistics.fmean(values) if values else None
