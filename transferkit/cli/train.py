"""`transferkit train TRAIN_DIR --out RUN_DIR`: a folder of images to a
fine-tuned, reported (and, with `--export`, exported) model, with the image
task's recipe (`transferkit.tasks`).

The same command again resumes an interrupted run; once the run is finished
it says so in one line and exits 0 without training (exporting first if an
`--export` it names is missing).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from transferkit.errors import ReportError
from transferkit.records.layout import REPORT_FILE
from transferkit.records.report import load_report

__all__ = ["add_train", "train"]

_DEFAULTS = "(default: %(default)s)"


def add_train(commands) -> None:
    """Adds the `train` command to `commands` (argparse subparsers)."""
    command = commands.add_parser(
        "train",
        help="train an image classifier on a folder of class folders",
        description=__doc__.split("\n\n")[0],
    )
    command.add_argument(
        "train_dir", metavar="TRAIN_DIR", help="a folder with one subfolder per class"
    )
    command.add_argument(
        "--out",
        required=True,
        metavar="RUN_DIR",
        help="the run folder: checkpoints, report.json, report.md, figures",
    )
    command.add_argument(
        "--backbone",
        default="MobileNetV2",
        metavar="NAME_OR_PRESET",
        help="a catalogue name (e.g. EfficientNetB0, ResNet50) or a keras-hub "
        f"preset: a folder, an hf:// handle or a preset name {_DEFAULTS}",
    )
    command.add_argument(
        "--weights",
        default="imagenet",
        metavar="imagenet|none|FILE",
        help="the backbone's weights: ImageNet's (downloaded once), a weights "
        "file of the backbone without its top; 'none' is refused (a head on a "
        f"random frozen backbone learns next to nothing) {_DEFAULTS}",
    )
    command.add_argument(
        "--test", metavar="DIR", help="class folders to validate and test on"
    )
    command.add_argument(
        "--validation-split",
        type=float,
        metavar="F",
        help="share of TRAIN_DIR held out to validate on (default: 0.2 "
        "without --test, 0 with it)",
    )
    command.add_argument(
        "--image-size",
        type=int,
        metavar="N",
        help="square image size (default: the size of the backbone's weights)",
    )
    command.add_argument(
        "--alpha",
        type=float,
        metavar="F",
        help="width multiplier of a MobileNet backbone, e.g. 0.35 (default: 1.0)",
    )
    _add_recipe_options(command)
    _add_output_options(command)


def _add_output_options(command) -> None:
    command.add_argument(
        "--search-freeze",
        action="store_true",
        help="choose how many top stages of the backbone the top stage trains "
        "(0 to 3) by a search over what to freeze, on the validation data "
        "(with --test alone, 20%% of TRAIN_DIR is held out for it); the search "
        "is in the report",
    )
    command.add_argument(
        "--export",
        metavar="PATH",
        help="also export the model there (a .tflite by default), with labels.txt",
    )
    command.add_argument(
        "--format",
        choices=("litert", "tf_saved_model", "onnx"),
        default="litert",
        help=f"the --export format {_DEFAULTS}",
    )
    command.add_argument(
        "--quantize",
        choices=("dynamic", "int8"),
        help="quantize the --export (LiteRT only): dynamic-range or full int8 "
        "(calibrated on the test images, else the training images)",
    )
    command.add_argument(
        "--verbose",
        choices=("auto", "0", "1", "2"),
        default="auto",
        help=f"Keras' progress output; 0 prints only the result {_DEFAULTS}",
    )


def _add_recipe_options(command) -> None:
    from transferkit.tasks.recipe import ImageRecipe

    recipe = ImageRecipe()
    options = (
        ("--epochs", "epochs", "epochs of the head on the frozen backbone"),
        (
            "--fine-tune-epochs",
            "fine_tune_epochs",
            "epochs of the top stage with the head; 0 skips",
        ),
        ("--batch-size", "batch_size", "images per step"),
        ("--seed", "seed", "seed of the head, shuffling, augmentation, split"),
    )
    for flag, field, words in options:
        command.add_argument(
            flag,
            type=int,
            metavar="N",
            default=getattr(recipe, field),
            help=f"{words} {_DEFAULTS}",
        )


def _command_settings(args) -> dict[str, Any]:
    """What makes two `train` commands the same run: the options, with paths
    made absolute, and the folders' files (names, sizes, times)."""
    return {
        "train": os.path.abspath(args.train_dir),
        "train_files": _files_digest(args.train_dir),
        "backbone": _absolute_if_path(args.backbone),
        "weights": _absolute_if_path(args.weights),
        "test": None if args.test is None else os.path.abspath(args.test),
        "test_files": None if args.test is None else _files_digest(args.test),
        "validation_split": args.validation_split,
        "image_size": args.image_size,
        "alpha": args.alpha,
        "epochs": args.epochs,
        "fine_tune_epochs": args.fine_tune_epochs,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "search_freeze": args.search_freeze,
    }


def _absolute_if_path(value: str) -> str:
    return os.path.abspath(value) if os.path.exists(value) else value


def _files_digest(folder: str) -> str | None:
    """A digest of every file under `folder` (its path, size and time): a
    folder that gained, lost or changed an image is another run's data."""
    if not os.path.isdir(folder):
        return None
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            stat = os.stat(path)
            relative = os.path.relpath(path, folder)
            digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _finished(args, command: dict[str, Any]) -> dict[str, Any] | None:
    """The report of the same command's finished run in `--out`, else None."""
    if not (Path(args.out) / REPORT_FILE).is_file():
        return None
    from transferkit.run_folder.state import saved_phases

    try:
        report = load_report(args.out)
        phases = saved_phases(args.out)
    except (OSError, ReportError, ValueError):
        return None
    same = report.get("settings", {}).get("command") == command
    done = bool(phases) and all(finished for *_, finished in phases)
    return report if same and done else None


def train(args) -> int:
    """Runs `transferkit train` (see the module docstring)."""
    command = _command_settings(args)
    report = _finished(args, command)
    if report is not None:
        accuracy = report["phases"][-1].get("test_accuracy")
        where = report["settings"].get("tested_on") or "the test data"
        tested = "" if accuracy is None else f", accuracy {accuracy:.2%} on {where}"
        print(
            f"{args.out}: finished earlier ({len(report['phases'])} stages"
            f"{tested}); nothing trained. Report: "
            f"{os.path.join(args.out, 'report.md')}"
        )
        if args.export and not os.path.exists(args.export):
            _export_finished(args, report["settings"]["command"])
        return 0
    from transferkit.tasks.image_classifier import ImageClassifierTask

    if args.export:
        from transferkit.serving.targets import check_target

        # Before training, not after: a wrong --export costs no training.
        check_target(Path(args.export), args.format, overwrite=False)
    weights = None if args.weights.lower() == "none" else args.weights
    task = ImageClassifierTask(
        args.train_dir,
        out=args.out,
        backbone=args.backbone,
        weights=weights,
        test=args.test,
        validation_split=args.validation_split,
        image_size=args.image_size,
        backbone_options=None if args.alpha is None else {"alpha": args.alpha},
        verbose=args.verbose if args.verbose == "auto" else int(args.verbose),
        notes={"command": command},
        epochs=args.epochs,
        fine_tune_epochs=args.fine_tune_epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        fine_tune_stages="search" if args.search_freeze else 1,
    )
    try:
        task.fit()
        if args.export:
            task.export(args.export, format=args.format, quantize=args.quantize)
    finally:
        task.close()
    return 0


def _export_finished(args, command: dict[str, Any]) -> None:
    from transferkit.run_folder.loading import load_trained_model
    from transferkit.serving.exporting import export

    export(
        load_trained_model(args.out),
        args.export,
        format=args.format,
        quantize=args.quantize,
        samples=[command["test"] or command["train"]],
        test_data=[command["test"]] if command["test"] else None,
    )
