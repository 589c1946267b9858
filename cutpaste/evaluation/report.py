"""Benchmark results: per-category mean +- std over seeds, texture/object groups, paper numbers.

Input is one record per (category, seed) run; output is a table written as Markdown, CSV and Parquet.
AUROCs are stored as fractions in records and shown as percentages, like the paper.
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from cutpaste.atomic import atomic_write_text
from cutpaste.data.layout import category_kind
from cutpaste.evaluation.paper import PAPER_IMAGE_AUROC, PAPER_PIXEL_AUROC

METRICS = ("image_auroc", "pixel_auroc", "aupro")


@dataclass
class RunRecord:
    category: str
    seed: int
    status: str  # "finished" or "failed"
    image_auroc: float | None = None
    pixel_auroc: float | None = None
    aupro: float | None = None
    error: str = ""
    run_name: str = ""
    # Validation AUROC without test labels (cutpaste.evaluation.validation.training_validation): what choices read.
    val_auroc: float | None = None
    # SHA-256 of the validation anomalies it was read on: val_auroc compares only between equal digests.
    validation_digest: str = ""
    # The benchmark's attempts after the first (infrastructure faults only), and what each was for.
    retries: int = 0
    faults: str = ""
    # The threshold's false-positive rate: expected from the calibration, realised on the test split's normals.
    expected_fpr: float | None = None
    test_fpr: float | None = None


@dataclass
class SummaryRow:
    category: str
    kind: str  # texture, object, or a group name for average rows
    seeds: int
    failed: int
    image_auroc_mean: float | None
    image_auroc_std: float | None
    pixel_auroc_mean: float | None
    pixel_auroc_std: float | None
    aupro_mean: float | None
    aupro_std: float | None
    paper_image_auroc: float | None
    paper_pixel_auroc: float | None
    retries: int = 0
    test_fpr_mean: float | None = None
    expected_fpr_mean: float | None = None


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _average(rows: Sequence[SummaryRow], name: str) -> SummaryRow | None:
    if not rows:
        return None

    def avg(attr: str) -> float | None:
        values = [getattr(r, attr) for r in rows if getattr(r, attr) is not None]
        return statistics.fmean(values) if values else None

    # Paper averages are only comparable when every category has a paper number.
    def paper(attr: str) -> float | None:
        return avg(attr) if all(getattr(r, attr) is not None for r in rows) else None

    return SummaryRow(
        category=name,
        kind="average",
        seeds=sum(r.seeds for r in rows),
        failed=sum(r.failed for r in rows),
        image_auroc_mean=avg("image_auroc_mean"),
        image_auroc_std=None,
        pixel_auroc_mean=avg("pixel_auroc_mean"),
        pixel_auroc_std=None,
        aupro_mean=avg("aupro_mean"),
        aupro_std=None,
        paper_image_auroc=paper("paper_image_auroc"),
        paper_pixel_auroc=paper("paper_pixel_auroc"),
        retries=sum(r.retries for r in rows),
        test_fpr_mean=avg("test_fpr_mean"),
        expected_fpr_mean=avg("expected_fpr_mean"),
    )


def summarise(records: Sequence[RunRecord]) -> list[SummaryRow]:
    """Textures first, then objects (each sorted), then the texture, object and overall averages."""
    rows: list[SummaryRow] = []
    for category in sorted({r.category for r in records}):
        mine = [r for r in records if r.category == category]
        done = [r for r in mine if r.status == "finished"]
        stats = {m: _mean_std([getattr(r, m) for r in done if getattr(r, m) is not None]) for m in METRICS}
        rows.append(
            SummaryRow(
                category=category,
                kind=category_kind(category),
                seeds=len(done),
                failed=len(mine) - len(done),
                image_auroc_mean=stats["image_auroc"][0],
                image_auroc_std=stats["image_auroc"][1],
                pixel_auroc_mean=stats["pixel_auroc"][0],
                pixel_auroc_std=stats["pixel_auroc"][1],
                aupro_mean=stats["aupro"][0],
                aupro_std=stats["aupro"][1],
                paper_image_auroc=_fraction(PAPER_IMAGE_AUROC.get(category)),
                paper_pixel_auroc=_fraction(PAPER_PIXEL_AUROC.get(category)),
                retries=sum(r.retries or 0 for r in mine),
                test_fpr_mean=_mean_std([r.test_fpr for r in done if r.test_fpr is not None])[0],
                expected_fpr_mean=_mean_std([r.expected_fpr for r in done if r.expected_fpr is not None])[0],
            )
        )
    rows.sort(key=lambda r: (r.kind != "texture", r.category))
    textures = [r for r in rows if r.kind == "texture" and r.seeds]
    objects = [r for r in rows if r.kind == "object" and r.seeds]
    for group, name in ((textures, "mean (textures)"), (objects, "mean (objects)"), (textures + objects, "mean")):
        average = _average(group, name)
        if average is not None:
            rows.append(average)
    return rows


def _fraction(value: float | None) -> float | None:
    return None if value is None else value / 100


def _pct(mean: float | None, std: float | None = None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def to_markdown(rows: Sequence[SummaryRow], failures: Sequence[RunRecord] = ()) -> str:
    has_pixel = any(r.pixel_auroc_mean is not None for r in rows)
    head = ["category", "kind", "seeds", "image AUROC", "paper"]
    if has_pixel:
        head += ["pixel AUROC", "paper (pixel)", "AUPRO"]
    has_fpr = any(r.test_fpr_mean is not None for r in rows)
    if has_fpr:
        head.append("FPR test (expected)")
    head.append("retries")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        seeds = f"{r.seeds}" + (f" ({r.failed} failed)" if r.failed else "")
        cells = [r.category, r.kind, seeds, _pct(r.image_auroc_mean, r.image_auroc_std), _pct(r.paper_image_auroc)]
        if has_pixel:
            cells += [
                _pct(r.pixel_auroc_mean, r.pixel_auroc_std),
                _pct(r.paper_pixel_auroc),
                _pct(r.aupro_mean, r.aupro_std),
            ]
        if has_fpr:
            cells.append(f"{_pct(r.test_fpr_mean)} ({_pct(r.expected_fpr_mean)})")
        cells.append(str(r.retries))
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if failures:
        text += "\nFailed runs:\n" + "".join(f"- {f.run_name or f.category}: {f.error}\n" for f in failures)
    return text


def write_results(records: Sequence[RunRecord], out_dir: str | Path, *, stem: str = "results") -> dict[str, Path]:
    """Writes ``<stem>.md``, ``<stem>.csv``, ``<stem>.parquet`` (summary) and ``<stem>_runs.parquet``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summarise(records)
    failures = [r for r in records if r.status != "finished"]
    summary = pa.Table.from_pylist([asdict(r) for r in rows])
    runs = pa.Table.from_pylist([asdict(r) for r in records])
    paths = {
        "markdown": out_dir / f"{stem}.md",
        "csv": out_dir / f"{stem}.csv",
        "parquet": out_dir / f"{stem}.parquet",
        "runs": out_dir / f"{stem}_runs.parquet",
    }
    atomic_write_text(to_markdown(rows, failures), paths["markdown"])
    buffer = io.BytesIO()
    pa_csv.write_csv(summary, buffer)
    atomic_write_text(buffer.getvalue().decode(), paths["csv"])
    for table, key in ((summary, "parquet"), (runs, "runs")):
        tmp = paths[key].with_name(f".{paths[key].name}.tmp")
        pq.write_table(table, tmp)
        tmp.replace(paths[key])
    return paths
