"""The paper-sized benchmark as one job, on a simulated GPU cluster: does the driver hold at 75 runs?

    .venv/bin/python bench/scale.py                        # 4, 20 and 75 runs; results in bench/results/scale.*
    .venv/bin/python bench/scale.py --sizes 4 --resume-check 0

A local Ray head declares logical GPUs (Ray schedules on them; the runs train on the CPU), 15 synthetic
categories are written (the 5 generators x 3 seeds), and ``pipelines/full_benchmark.py`` is submitted
through ``ray job submit`` like a user would, with ``--gpus-per-run`` packing several runs per GPU and a
tiny training budget. For each size it reports wall time, the runs' own training seconds, packing
efficiency (slot-seconds the runs held / (slots x wall)), fixed seconds per run (start-up, evaluation,
logging), the driver's peak memory and the MLflow runs created. With ``--resume-check`` the largest size
is stopped once that share of its runs finished and resubmitted with the same ``--benchmark-id``: the
report says how many finished runs were trained again (the target is none).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from cutpaste.atomic import atomic_write_text
from cutpaste.data.synth import SYNTH_CATEGORIES, generate_dataset
from infra.local.services import VENV_BIN, job_status, ray_head, ray_job, submit_job_no_wait

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "scale.json"
SIZES = {4: (4, 1), 20: (4, 5), 75: (15, 5)}  # runs -> (categories, seeds)
BUDGET = {"preset": "ci", "image_size": 32, "steps": 4, "batch_size": 4, "checkpoint_every": 2, "log_every": 2}


def make_categories(root: Path, count: int) -> list[str]:
    """``count`` synthetic categories: each generator with several seeds, renamed ``<name>_<k>``."""
    names = []
    for k in range(-(-count // len(SYNTH_CATEGORIES))):
        scratch = root.parent / f".gen-{k}"
        generate_dataset(
            scratch,
            categories=len(SYNTH_CATEGORIES),
            size=32,
            seed=k,
            train_count=12,
            test_good=4,
            test_defect_per_type=1,
        )
        for name in SYNTH_CATEGORIES:
            if len(names) < count:
                target = f"{name}_{k}"
                shutil.move(str(scratch / name), str(root / target))
                names.append(target)
        shutil.rmtree(scratch, ignore_errors=True)
    return names


def submit(head: dict, entrypoint: list[str], submission_id: str) -> None:
    submit_job_no_wait(head, entrypoint, submission_id, working_dir=REPO)


def finished_runs(db: Path, benchmark_id: str) -> dict[str, int]:
    """run name -> start time (ms) of every FINISHED child run of the benchmark, read from the sqlite store."""
    import sqlite3

    if not db.exists():
        return {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "select r.name, r.start_time from runs r join tags t on t.run_uuid = r.run_uuid "
            "where t.key = 'cutpaste.role' and t.value = 'run' and r.status = 'FINISHED' and r.run_uuid in "
            "(select run_uuid from tags where key = 'cutpaste.benchmark_id' and value = ?)",
            (benchmark_id,),
        ).fetchall()
    return dict(rows)


def mlflow_runs(db: Path, benchmark_id: str) -> int:
    """Every MLflow run the benchmark created: its parent, its runs, its ensembles."""
    import sqlite3

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute(
            "select count(*) from tags where key = 'cutpaste.benchmark_id' and value = ?", (benchmark_id,)
        ).fetchone()[0]


def _entrypoint(work: Path, data: Path, runs: int, args: argparse.Namespace) -> list[str]:
    """The benchmark job's command line for ``runs`` runs (five seeds and more: ensembles of five too)."""
    categories, seeds = SIZES[runs]
    names = sorted(p.name for p in data.iterdir())[:categories]
    benchmark_id = f"scale-{runs}"
    config = work / "budget.json"
    config.write_text(json.dumps(BUDGET))
    entrypoint = [
        str(VENV_BIN / "python"), "pipelines/full_benchmark.py", "--data", str(data), "--categories", *names,
        "--seeds", str(seeds), "--config", str(config), "--benchmark-id", benchmark_id,
        "--mlflow-uri", f"sqlite:///{work / 'mlflow.db'}", "--out", str(work / benchmark_id),
        "--storage", str(work / "storage"), "--gpus-per-run", str(args.gpus_per_run), "--no-register",
    ]  # fmt: skip
    if seeds >= 5:
        entrypoint += ["--ensemble", "5"]
    return entrypoint


def _stop_and_resume(head: dict, db: Path, benchmark_id: str, target: float, entrypoint: list[str]) -> dict:
    """Stops the first job once ``target`` runs finished and submits the same benchmark again; returns the
    runs finished before the stop (name -> end time)."""
    while len(finished_runs(db, benchmark_id)) < target:
        if job_status(head, f"{benchmark_id}-a") not in ("RUNNING", "PENDING"):
            break
        time.sleep(2)
    before = finished_runs(db, benchmark_id)
    ray_job(head, "stop", f"{benchmark_id}-a", timeout=300)
    while job_status(head, f"{benchmark_id}-a") in ("RUNNING", "PENDING"):
        time.sleep(1)
    submit(head, entrypoint, f"{benchmark_id}-b")
    return before


def run_size(head: dict, work: Path, data: Path, runs: int, args: argparse.Namespace, *, stop_at: float) -> dict:
    benchmark_id = f"scale-{runs}"
    db = work / "mlflow.db"
    out = work / benchmark_id
    entrypoint = _entrypoint(work, data, runs, args)
    started = time.monotonic()
    submit(head, entrypoint, f"{benchmark_id}-a")
    resumed = _stop_and_resume(head, db, benchmark_id, stop_at * runs, entrypoint) if stop_at else None
    final_id = f"{benchmark_id}-b" if stop_at else f"{benchmark_id}-a"
    deadline = time.monotonic() + args.timeout
    while (state := job_status(head, final_id)) in ("RUNNING", "PENDING", "UNKNOWN") and time.monotonic() < deadline:
        time.sleep(2)
    wall = time.monotonic() - started
    driver = json.loads((out / "driver.json").read_text()) if (out / "driver.json").is_file() else {}
    after = finished_runs(db, benchmark_id)
    ensembles = json.loads((out / "ensembles.json").read_text()) if (out / "ensembles.json").is_file() else []
    report = {
        "runs": runs,
        "categories": SIZES[runs][0],
        "seeds": SIZES[runs][1],
        "job": state,
        "finished": len(after),
        "wall_s": round(wall, 1),
        **_packing(driver, wall, args),
        "driver_peak_rss_mb": driver.get("peak_rss_mb"),
        "mlflow_runs": mlflow_runs(db, benchmark_id),
        "ensembles_finished": sum(r.get("status") == "finished" for r in ensembles),
    }
    if resumed is not None:
        retrained = [name for name, start in resumed.items() if after.get(name) != start]
        report["resume"] = {"stopped_after_finished": len(resumed), "finished_runs_trained_again": len(retrained)}
    return report


def _packing(driver: dict, wall: float, args: argparse.Namespace) -> dict:
    """How full the GPU slots were, from the phases of the runs this driver trained (a resumed driver skips
    the finished ones: they have no phases here)."""
    phases = {name: p for name, p in driver.get("phases", {}).items() if p}
    # A run holds its slot while training and evaluating for sure; its "starting" phase also counts the one
    # run the driver starts beyond the slots (it waits inside Ray Train), so with it the figure is an upper
    # bound and without it a lower one.
    held = [p.get("training", 0) + p.get("evaluating", 0) for p in phases.values()]
    held_with_start = [h + p.get("starting", 0) for h, p in zip(held, phases.values(), strict=True)]
    fixed = [p.get("starting", 0) + p.get("evaluating", 0) + p.get("logging", 0) for p in phases.values()]
    slots = args.gpus / args.gpus_per_run
    slot_wall = slots * driver.get("wall_s", wall)
    return {
        "training_s_sum": round(sum(p.get("training", 0) for p in phases.values()), 1),
        "packing_efficiency": round(sum(held) / slot_wall, 3) if phases else None,
        "packing_upper_bound": round(min(1.0, sum(held_with_start) / slot_wall), 3) if phases else None,
        "runs_timed": len(phases),
        "fixed_s_per_run_median": round(statistics.median(fixed), 2) if fixed else None,
        "phase_medians_s": {
            k: round(statistics.median(p.get(k, 0) for p in phases.values()), 2)
            for k in ("queued", "starting", "training", "evaluating", "logging")
        } if phases else {},
    }  # fmt: skip


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    head = (
        "| runs | job | finished | ensembles | wall s | training s (sum) | packing (lower-upper) | fixed s/run "
        "| driver MB | MLflow runs | finished runs trained again after resume |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        resume = r.get("resume")
        again = f"{resume['finished_runs_trained_again']} of {resume['stopped_after_finished']}" if resume else "-"
        lines.append(
            f"| {r['runs']} | {r['job']} | {r['finished']} | {r.get('ensembles_finished', 0)} | {r['wall_s']} | "
            f"{r['training_s_sum']} | {r['packing_efficiency']}-{r.get('packing_upper_bound')} | "
            f"{r['fixed_s_per_run_median']} | {r['driver_peak_rss_mb']:.0f} | {r['mlflow_runs']} | {again} |"
        )
    return "\n".join(lines) + (
        f"\n\nLogical cluster: {args.cpus} CPUs, {args.gpus} GPUs, --gpus-per-run {args.gpus_per_run} "
        f"({int(args.gpus / args.gpus_per_run)} slots); budget {json.dumps(BUDGET)}.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4,20,75", help=f"runs per benchmark, of {sorted(SIZES)}")
    parser.add_argument("--gpus", type=float, default=2, help="logical GPUs the Ray head declares")
    parser.add_argument("--gpus-per-run", type=float, default=0.25)
    parser.add_argument("--cpus", type=int, default=10, help="logical CPUs (one per run slot, plus the driver's)")
    parser.add_argument("--resume-check", type=float, default=0.5, help="stop the largest size at this share")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one size may take")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if unknown := sorted(set(sizes) - set(SIZES)):
        parser.error(f"--sizes: {unknown} not among {sorted(SIZES)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="cutpaste-scale-") as scratch:
        work = Path(scratch)
        data = work / "data"
        data.mkdir()
        make_categories(data, max(SIZES[s][0] for s in sizes))
        env = {"OMP_NUM_THREADS": "1", "RAY_memory_monitor_refresh_ms": "0"}
        with ray_head(work, env={**os.environ, **env}, num_cpus=args.cpus, num_gpus=args.gpus) as head:
            for runs in sizes:
                stop = args.resume_check if runs == max(sizes) else 0.0
                row = run_size(head, work, data, runs, args, stop_at=stop)
                print(json.dumps(row), flush=True)
                rows.append(row)
    result = {"sizes": rows, "cluster": {"cpus": args.cpus, "gpus": args.gpus, "gpus_per_run": args.gpus_per_run}}
    atomic_write_text(json.dumps(result, indent=2) + "\n", args.out)
    atomic_write_text(markdown(rows, args), args.out.with_suffix(".md"))
    print(markdown(rows, args))
    return 0 if all(r["job"] == "SUCCEEDED" and r["finished"] == r["runs"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
