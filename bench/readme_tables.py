"""The result tables of the README and docs/, generated from the committed results files (bench/results/*.json).

    .venv/bin/python bench/readme_tables.py            # rewrite every block between its markers
    .venv/bin/python bench/readme_tables.py --check    # exit 1 naming each block that differs

A block is the text between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` in one of
:data:`DOCUMENTS`; ``tests/test_readme_tables.py`` fails when a block and its file disagree, so a number
typed by hand into one of them cannot stand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from decisions_doc import FINAL, RETIRED, row_mean

from cutpaste.atomic import atomic_write_text
from cutpaste.evaluation.paper import PAPER_IMAGE_AUROC, PAPER_PIXEL_AUROC
from cutpaste.presets import preset as preset_config

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# The documents holding generated blocks: the README's tables, and the long ones moved to docs/.
DOCUMENTS = (ROOT / "README.md", ROOT / "docs" / "reliability.md", ROOT / "docs" / "benchmark.md")


def _load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / name).read_text())


def results_table() -> list[str]:
    """Speed measurements, each with its command and file."""
    a, w = _load("augment.json"), _load("workers.json")
    o, loc = _load("orchestration.json"), _load("localize_cpu.json")
    rows = [
        (
            f"CutPaste-3way views, {a['size']} px, {a['batch']} views, {a['per_device']['cpu']['threads']} thread",
            f"{a['batched_img_s']:.0f} img/s batched vs {a['pil_img_s']:.0f} img/s per-image PIL ({a['speedup']:.2f}x)",
            "bench/augment.py",
            "augment.json",
        ),
        *_training_rows(),
        (
            f"one run on 1 worker against 2 data-parallel gloo workers, `{w['preset']}`, {w['steps']} steps",
            f"{w['workers_1']['step_s']:.3f} vs {w['workers_2']['step_s']:.3f} s/step "
            f"(ratio {w['step_time_ratio']:.2f})",
            f"bench/workers.py --preset {w['preset']} --steps {w['steps']}",
            "workers.json",
        ),
        (
            f"the Ray + MLflow pipeline against the bare library, {o['categories']} synthetic categories, "
            f"`{o['preset']}` preset",
            f"{o['pipeline_s']:.1f} vs {o['library_s']:.1f} s (overhead {o['overhead']:.2f}; "
            f"{o['overhead_beyond_startup']:.2f} beyond Ray Train's start-up of {o['train_run_startup_s']:.1f} s)",
            f"bench/orchestration.py --categories {o['categories']} --repeats 3",
            "orchestration.json",
        ),
        (
            f"dense scoring, {loc['image_size']} px, {loc['patch_size']} px patches, stride {loc['stride']}",
            f"{loc['img_s']:.2f} img/s batched vs {loc['naive_img_s']:.3f} per patch ({loc['speedup']:.1f}x)",
            "bench/localize.py --images 2",
            "localize_cpu.json",
        ),
    ]
    m = _load("eval_memory.json")
    small, large = m["rows"][0], m["rows"][-1]
    rows.append(
        (
            f"`cutpaste evaluate` with {m['side_px']} x {m['side_px']} masks, {small['test_images']} against "
            f"{large['test_images']} test images",
            f"peak RSS {small['peak_rss_mb']:.0f} vs {large['peak_rss_mb']:.0f} MB ({small['wall_s']:.0f} vs "
            f"{large['wall_s']:.0f} s; {large['mask_pixels'] / 1e6:.0f} M mask pixels)",
            "bench/eval_memory.py",
            "eval_memory.json",
        )
    )
    rows += _serving_rows()
    lines = ["| what | number | command | file |", "|---|---|---|---|"]
    lines += [f"| {w} | {n} | `.venv/bin/python {c}` | `bench/results/{f}` |" for w, n, c, f in rows]
    return lines


def _training_rows() -> list[tuple[str, str, str, str]]:
    """The training loop in fp32 against bf16 where bf16 is native, and in fp32 on an AVX2-only CPU."""
    t, x = _load("train_step.json"), _load("train_step_avx2.json")
    steps = preset_config(x["preset"]).steps
    return [
        (
            f"training loop, `{t['preset']}` preset ({t['image_size']} px, {t['batch']} images per step), "
            "fp32 against bf16 autocast + channels_last",
            f"{t['fp32_pipeline_img_s']:.1f} vs {t['amp_pipeline_img_s']:.1f} img/s ({t['speedup']:.2f}x); bare "
            f"model step {t['fp32_bare_img_s']:.1f} / {t['amp_bare_img_s']:.1f} img/s",
            f"bench/train_step.py --preset {t['preset']}",
            "train_step.json",
        ),
        (
            f"the same loop on a {x['threads']}-core AVX2-only CPU (no native bf16: fp32 in both)",
            f"{x['fp32_pipeline_img_s']:.1f} img/s (`{x['preset']}`'s {steps} steps: "
            f"{steps * x['batch'] / x['fp32_pipeline_img_s'] / 60:.0f} min)",
            f"bench/train_step.py --preset {x['preset']} --auroc-steps 0 --out bench/results/train_step_avx2.json",
            "train_step_avx2.json",
        ),
    ]


def _serving_rows() -> list[tuple[str, str, str, str]]:
    """The ONNX graph against PyTorch, and batch scoring on Ray Data against one process per image."""
    e = _load("export.json")
    g = e["rows"]["global"]["img_per_s"]
    b = _load("batch_score.json")
    one, ten, cli = b["memory"]["1000"], b["memory"]["10000"], b["throughput"]["cli_process_per_image"]
    return [
        (
            f"ONNX Runtime against PyTorch, global Gaussian + GradCAM map, {e['detector']['image_size']} px, "
            "batch 1 / 32",
            f"{g['onnxruntime']['1']:.1f} vs {g['pytorch']['1']:.1f} / {g['onnxruntime']['32']:.1f} vs "
            f"{g['pytorch']['32']:.1f} img/s",
            e["command"].removeprefix("python "),
            "export.json",
        ),
        (
            f"batch scoring on Ray Data (2 actors, S3 with 20 ms latency, {b['image_size']} px), 1k / 10k "
            "images, against one `cutpaste predict` process per image",
            f"{one['images_per_s']:.1f} / {ten['images_per_s']:.1f} vs {cli['images_per_s']:.2f} img/s; driver "
            f"peak RSS {one['peak_rss']['driver_mb']:.0f} / {ten['peak_rss']['driver_mb']:.0f} MB",
            "bench/batch_score.py --sizes 1000,10000 --loop-images 100",
            "batch_score.json",
        ),
    ]


def chaos_table() -> list[str]:
    data = _load("chaos.json")
    lines = [
        "| fault | injected | runs FINISHED | runs retried (retries) | metrics equal | seconds lost | leaked PGs | "
        "actors left |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in data["kinds"]:
        actors = ", ".join(k["actors_left"]) or "0"
        lines.append(
            f"| {k['kind']} | {k['faults_injected']} | {k['runs_finished']}/{k['runs']} | {k['runs_retried']} "
            f"({k['retries']}) | {k['metrics_equal']}/{k['runs']} | {k['seconds_lost']:.1f} | "
            f"{k['leaked_placement_groups']} | {actors} |"
        )
    return lines


def scale_table() -> list[str]:
    lines = [
        "| runs | categories x seeds | job | finished | ensembles | wall s | driver peak MB | MLflow runs | "
        "finished runs trained again after the mid-way stop |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in _load("scale.json")["sizes"]:
        resume = s.get("resume")
        again = f"{resume['finished_runs_trained_again']} of {resume['stopped_after_finished']}" if resume else "-"
        ensembles = s.get("ensembles_finished") or "-"
        lines.append(
            f"| {s['runs']} | {s['categories']} x {s['seeds']} | {s['job']} | {s['finished']} | {ensembles} | "
            f"{s['wall_s']:.0f} | {s['driver_peak_rss_mb']:.0f} | {s['mlflow_runs']} | {again} |"
        )
    return lines


def decisions_table() -> list[str]:
    """Each decision made of each preset in use (a retired preset's, those still short of seeds and the
    training recipes tried, against the preset and the twin, stay in docs/decisions.md): validation delta
    with its interval, and the verdict; auto's candidate list as one line per preset."""
    if not (RESULTS / "decisions.json").is_file():
        return ["(no decisions recorded yet: run `bench/decide.py`)"]
    data = _load("decisions.json")
    lines = [
        "| preset | decision | seeds per category | val delta [95 % interval] | test delta | verdict |",
        "|---|---|---|---|---|---|",
    ]
    listed: dict[str, dict[str, list[str]]] = {}
    for d in sorted(data["decisions"], key=lambda d: d["preset"]):  # stable: each preset in its own order
        if d["scope"] != "all" or d["preset"] in RETIRED or d["decision"].startswith(("training at ", "recipe: ")):
            continue
        if d["decision"].startswith("auto list: "):
            kept = (
                "undecided" if d["verdict"].startswith("undecided") else "stayed" if d["verdict"] == "adopt" else "left"
            )
            listed.setdefault(d["preset"], {}).setdefault(kept, []).append(d["decision"].removeprefix("auto list: "))
            continue
        if d["verdict"] not in FINAL:
            continue
        seeds = min(d["seeds"].values())
        test = "-" if d["test_delta"] is None else f"{d['test_delta']:+.3f}"
        pixel = " (pixel)" if d.get("metric") == "val_pixel_auroc" else ""
        lines.append(
            f"| {d['preset']} | {d['decision']}{pixel} | {seeds} | {d['val_delta']:+.3f} [{d['val_low']:+.3f}, "
            f"{d['val_high']:+.3f}] | {test} | {d['verdict']} |"
        )
    for preset, groups in sorted(listed.items()):
        text = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(groups.items()))
        lines.append(f"| {preset} | image_score=auto's candidates | | each against the list without it | | {text} |")
    return lines


def training_table() -> list[str]:
    """Trained against untrained and the paper, per preset in use and category: means over seeds."""
    if not (RESULTS / "decisions.json").is_file():
        return ["(no runs recorded yet: run `bench/decide.py`)"]
    runs = _load("decisions.json")["runs"]
    lines = [
        "| preset | category | seeds | image AUROC trained / untrained (validation) | pixel AUROC trained / "
        "untrained | pixel statistics | paper image / pixel |",
        "|---|---|---|---|---|---|---|",
    ]
    for preset, category in sorted({(r["preset"], r["category"]) for r in runs if r["preset"] not in RETIRED}):

        def mean(row: str, key: str, p: str = preset, c: str = category) -> str:
            return row_mean(runs, p, c, row, key)

        seeds = len({r["seed"] for r in runs if (r["preset"], r["category"], r["row"]) == (preset, category, "preset")})
        paper = f"{PAPER_IMAGE_AUROC.get(category, '-')} / {PAPER_PIXEL_AUROC.get(category, '-')}"
        lines.append(
            f"| {preset} | {category} | {seeds} | {mean('preset', 'image_auroc')} / {mean('untrained', 'image_auroc')} "
            f"({mean('preset', 'val_auroc')} / {mean('untrained', 'val_auroc')}) | {mean('preset', 'pixel_auroc')} / "
            f"{mean('untrained', 'pixel_auroc')} | {mean('pixel-stats', 'image_auroc')} | {paper} |"
        )
    return lines


BLOCKS: dict[str, Callable[[], list[str]]] = {
    "results": results_table,
    "chaos": chaos_table,
    "scale": scale_table,
    "decisions": decisions_table,
    "training": training_table,
}


def render(text: str) -> str:
    """``text`` with every generated block rewritten from its file."""
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)", re.S)
        text = pattern.sub(lambda m, make=make: m.group(1) + "\n".join(make()) + "\n" + m.group(2), text)
    return text


def differing_blocks(text: str) -> list[str]:
    """Names of the blocks whose text is not what their files give."""
    fresh = render(text)
    out = []
    for name in BLOCKS:
        pattern = re.compile(rf"<!-- generated:{name} -->\n(.*?)<!-- /generated:{name} -->", re.S)
        if [m.group(1) for m in pattern.finditer(text)] != [m.group(1) for m in pattern.finditer(fresh)]:
            out.append(name)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report blocks that differ (exit 1)")
    args = parser.parse_args()
    stale = []
    for path in DOCUMENTS:
        text = path.read_text()
        if args.check:
            stale += [f"{path.relative_to(ROOT)}: {name}" for name in differing_blocks(text)]
        else:
            atomic_write_text(render(text), path)
            print(f"rewrote the generated blocks of {path.relative_to(ROOT)}")
    if stale:
        print(f"generated blocks differ from their results files: {', '.join(stale)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
