"""The ``cutpaste`` parser and entry point: every command's flags, and one-line errors with exit code 2."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from cutpaste.cli.commands import (
    _FIELD_FLAGS,
    _cmd_config,
    _cmd_evaluate,
    _cmd_localize,
    _cmd_predict,
    _cmd_synth,
    _cmd_train,
    _cmd_verify,
)
from cutpaste.errors import CutPasteError

MAP_MODES = ("auto", "dense", "local", "gradcam")  # as cutpaste.detector.MAP_MODES, without importing torch here


_MAPS_HELP = "dense (patch model), local (image model with feature-map Gaussians), gradcam, or auto"


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="demo", help="named config: paper, short, demo, ci (default: demo)")
    parser.add_argument("--config", help="JSON file: a short difference from a preset")
    for flag, (field, kind) in _FIELD_FLAGS.items():
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind, help=f"config field {field}")
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="any config field, e.g. augment.pre_jitter=0.2"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cutpaste",
        description="The ``cutpaste`` command: train, evaluate, predict, export, config and data tools.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(sub)
    _add_evaluate_parser(sub)
    _add_predict_parser(sub)
    _add_localize_parser(sub)
    _add_config_parser(sub)
    _add_data_parser(sub)
    _add_verify_parser(sub)
    from cutpaste.serving.export import add_export_command  # the command and its checks live there

    add_export_command(sub)
    return parser


def _add_verify_parser(sub: Any) -> None:
    verify = sub.add_parser("verify", help="check a model's files against their recorded SHA-256, print its digest")
    verify.add_argument("model", metavar="MODEL", help="a model directory (detector or ensemble)")
    verify.add_argument("--sha256", metavar="HEX", help="also require this digest (e.g. from the model registry)")
    verify.set_defaults(func=_cmd_verify)


def _add_maps_flag(parser: argparse.ArgumentParser) -> None:
    """One definition for the three commands that draw anomaly maps, so their choices cannot drift apart."""
    parser.add_argument("--maps", default="auto", choices=MAP_MODES, help=_MAPS_HELP)


def _add_train_parser(sub: Any) -> None:
    train = sub.add_parser("train", help="train a detector on one category")
    train.add_argument("--data", required=True, help="dataset root in MVTec AD layout, local or s3://bucket/prefix")
    train.add_argument("--s3-endpoint", help="S3-compatible endpoint (default $AWS_ENDPOINT_URL)")
    train.add_argument("--category", required=True)
    train.add_argument("--out", required=True, help="model directory (resumes an unfinished run there)")
    _add_config_flags(train)
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    train.add_argument("--restart", action="store_true", help="ignore a checkpoint in --out and start over")
    train.add_argument("--overwrite", action="store_true", help="replace a finished detector in --out")
    train.add_argument("--evaluate", action="store_true", help="evaluate on the test split afterwards")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(func=_cmd_train)


def _add_evaluate_parser(sub: Any) -> None:
    evaluate = sub.add_parser("evaluate", help="image metrics of a detector on a category's test split")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--data", required=True, help="dataset root, local or s3://bucket/prefix")
    evaluate.add_argument("--s3-endpoint", help="S3-compatible endpoint (default $AWS_ENDPOINT_URL)")
    evaluate.add_argument("--category", help="default: the category the detector was trained on")
    evaluate.add_argument("--json", help="write metrics and per-image scores to this file")
    evaluate.add_argument("--no-pixel", action="store_true", help="skip anomaly maps and pixel metrics")
    _add_maps_flag(evaluate)
    evaluate.add_argument("--device", default="auto")
    evaluate.set_defaults(func=_cmd_evaluate)


def _add_predict_parser(sub: Any) -> None:
    predict = sub.add_parser("predict", help="score images and give a normal/anomalous verdict")
    predict.add_argument("--model", required=True)
    predict.add_argument("images", nargs="+")
    predict.add_argument("--threshold", type=float, help="override the detector's calibrated threshold")
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table")
    predict.add_argument("--heatmap", metavar="DIR", help="write an overlay PNG per image to DIR")
    predict.add_argument("--sha256", metavar="HEX", help="refuse the model unless its bundle has this SHA-256")
    _add_maps_flag(predict)
    predict.add_argument("--device", default="auto")
    predict.set_defaults(func=_cmd_predict)


def _add_localize_parser(sub: Any) -> None:
    localize = sub.add_parser("localize", help="anomaly maps of a category's test split: overlays, grid, metrics")
    localize.add_argument("--model", required=True)
    localize.add_argument("--data", required=True, help="dataset root, local or s3://bucket/prefix")
    localize.add_argument("--s3-endpoint", help="S3-compatible endpoint (default $AWS_ENDPOINT_URL)")
    localize.add_argument("--category", help="default: the category the detector was trained on")
    localize.add_argument("--out", required=True, help="directory for overlays, the grid figure and metrics.json")
    _add_maps_flag(localize)
    localize.add_argument("--device", default="auto")
    localize.add_argument("--no-progress", action="store_true")
    localize.set_defaults(func=_cmd_localize)


def _add_config_parser(sub: Any) -> None:
    config = sub.add_parser("config", help="print the resolved config (preset + flags) as JSON")
    _add_config_flags(config)
    config.set_defaults(func=_cmd_config)


def _add_data_parser(sub: Any) -> None:
    """``data synth`` lives here; the storage commands register themselves (cutpaste/storage/cli.py)."""
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write synthetic MVTec-layout categories")
    synth.add_argument("out")
    synth.add_argument("--categories", type=int, default=4)
    synth.add_argument("--size", type=int, default=128)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_cmd_synth)
    from cutpaste.storage.cli import add_storage_commands

    add_storage_commands(data)


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"cutpaste: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _print_warning
            return args.func(args)
    except CutPasteError as exc:
        print(f"cutpaste: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cutpaste: interrupted; an unfinished training run resumes from its last checkpoint", file=sys.stderr)
        return 130
