"""`transferkit report DIR` (or `python -m transferkit report DIR`): print a
run's report as tables.

`python -m transferkit predict RUN_OR_MODEL PATH...`: predictions on image
files and folders, loaded as the training images were; `python -m
transferkit export RUN_OR_MODEL PATH --format litert`: export with a parity
check. Both take a run folder (its last checkpoint) or a `.keras` file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transferkit.cli.train import add_train, train
from transferkit.errors import ReportError
from transferkit.records.report import format_summary, load_report
from transferkit.utils.io import atomic_write


def build_parser() -> argparse.ArgumentParser:
    """The `transferkit` command's parser: `report`, `predict`, `export`,
    `train`."""
    parser = argparse.ArgumentParser(prog="transferkit")
    commands = parser.add_subparsers(dest="command", required=True)
    report_command = commands.add_parser(
        "report", help="print the tables of a run's report.json"
    )
    report_command.add_argument(
        "path", help="a run folder (e.g. the example's --out) or a report.json"
    )
    _add_predict(commands)
    _add_export(commands)
    add_train(commands)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        return _guarded(train, args)
    if args.command == "predict":
        return _guarded(_predict, args)
    if args.command == "export":
        return _guarded(_export, args)
    try:
        report = load_report(args.path)
    except (OSError, ReportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Data: {report['dataset']}\n")
    print(format_summary(report))
    return 0


def _add_predict(commands) -> None:
    command = commands.add_parser(
        "predict", help="predict the classes of image files and folders"
    )
    command.add_argument("model", help="a run folder or a .keras file")
    command.add_argument(
        "paths", nargs="+", help="image files, folders of images, or class folders"
    )
    command.add_argument(
        "--format",
        choices=("table", "csv", "json"),
        default="table",
        help="a table to read, CSV or JSON (default: table)",
    )
    command.add_argument("--output", help="write to this file instead of stdout")
    command.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the --output file if it exists (refused otherwise)",
    )
    command.add_argument(
        "--strict",
        action="store_true",
        help="refuse all if a file is no readable image (default: skip it, listed)",
    )
    command.add_argument(
        "--batch-size", type=int, default=32, help="images per step (default: 32)"
    )


def _add_export(commands) -> None:
    from_model = "a run folder or a .keras file"
    command = commands.add_parser(
        "export", help="export for serving, checked against the model"
    )
    command.add_argument("model", help=from_model)
    command.add_argument("path", help="the artifact (a folder for tf_saved_model)")
    command.add_argument(
        "--format",
        choices=("tf_saved_model", "litert", "onnx"),
        default="litert",
        help="litert: a .tflite file with its labels inside; tf_saved_model: a "
        "folder for TensorFlow Serving; onnx: a .onnx file (default: litert)",
    )
    command.add_argument(
        "--quantize",
        choices=("dynamic", "int8"),
        default=None,
        help="LiteRT only: dynamic-range (int8 weights) or full int8 "
        "(calibrated on --data); accuracy before and after is reported "
        "(default: none, float32)",
    )
    command.add_argument(
        "--data",
        nargs="+",
        help="image folders (class folders) for the parity check, the int8 "
        "representative data and the accuracy before and after",
    )
    command.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier export at PATH (never a run folder or other files)",
    )


def _guarded(command, args) -> int:
    """Runs `command`, printing a refusal as one line, as `report` does."""
    try:
        return command(args)
    except (OSError, ValueError, ImportError, FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(f"\n{interrupt or 'Interrupted.'}", file=sys.stderr)
        return 130


def _predict(args) -> int:
    from transferkit.run_folder.loading import load_trained_model
    from transferkit.serving.predictions import predict_files

    if args.output and Path(args.output).exists() and not args.overwrite:
        raise ValueError(
            f"{args.output!r} exists; nothing was written. Pass --overwrite to "
            "replace it, or choose another --output."
        )
    model = load_trained_model(args.model)
    predictions = predict_files(
        model, args.paths, batch_size=args.batch_size, strict=args.strict
    )
    if args.format == "csv" and predictions.skipped:  # The table and JSON list them.
        print("\n".join(predictions.skipped_lines()).strip(), file=sys.stderr)
    text = {
        "table": predictions.table,
        "csv": predictions.to_csv,
        "json": predictions.to_json,
    }[args.format]()
    if args.output:
        atomic_write(Path(args.output), text + ("" if text.endswith("\n") else "\n"))
    else:
        print(text)
    return 0


def _export(args) -> int:
    from transferkit.run_folder.loading import load_trained_model
    from transferkit.serving.exporting import export
    from transferkit.serving.predictions import image_files

    if args.quantize == "int8" and not args.data:
        raise ValueError(
            "--quantize int8 calibrates on representative images: pass --data "
            "FOLDER, images of the run's data (e.g. its test folder)."
        )
    model = load_trained_model(args.model)
    labelled = bool(args.data) and None not in image_files(args.data)[1]
    export(
        model,
        args.path,
        format=args.format,
        quantize=args.quantize,
        samples=args.data,
        test_data=args.data if labelled else None,
        overwrite=args.overwrite,
    )
    return 0
