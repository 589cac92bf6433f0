"""Transfer with a `keras.applications` backbone cut into groups.

The backbone is split at a block boundary into "bottom" and "top"; a new
"head" (global pooling and a softmax layer) sits on it. The transfer runs in
stages, each an ordinary phase of one `TransferRun`:

1. "pretrain" (only without `--weights` or `--images`): the whole network
   learns the MNIST digits 0-4, resized to the backbone's smallest input and
   given three channels. This stands in for ImageNet pretraining, offline.
2. "head": the backbone is frozen; the head learns the new classes (the
   digits 5-9, or the classes of `--images`). The frozen backbone's output is
   computed once, not on every step (the feature cache).
3. "top": the top blocks are unfrozen and train with a tenth of the head's
   learning rate (`lr_multipliers={"top": 0.1}`), their BatchNormalization
   in inference mode; the bottom stays frozen and cached below the cut.
4. "all": the whole backbone trains too, the bottom at a hundredth of the
   head's rate and the top at a tenth, as the Keras guide's last step
   fine-tunes the whole base at a low rate.

    python examples/pretrained_backbone.py --out runs/backbone
    python examples/pretrained_backbone.py --backbone InceptionV3 --epochs 1
    python examples/pretrained_backbone.py --weights imagenet --images photos/

With `--out DIR` the run is kept in DIR, with a report and figures, and the
same command resumes it after a crash, a kill or Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from transferkit import (
    ImagenetPreprocessing,
    LayerGroup,
    PhaseResult,
    Speed,
    TransferRun,
    split_classes,
)
from transferkit.datasets import mnist
from transferkit.records import (
    ensure_writable,
    figures_line,
    format_phase,
    format_top_losses,
)


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A `keras.applications` backbone and where to cut it."""

    build: Callable[..., keras.Model]
    """The application's constructor."""

    size: int
    """The smallest input it builds from (square)."""

    pretrained_size: int
    """The smallest input its ImageNet weights were made for."""

    cut: str
    """The last layer of "bottom": a cut crossed by one tensor."""

    preprocessing: str
    """The mode of its `preprocess_input` (`ImagenetPreprocessing`), for
    pixel values 0-255."""

    options: dict = dataclasses.field(default_factory=dict)
    """Further constructor arguments."""


BACKBONES = {
    # At its smallest input, 32x32, MobileNetV2 trains in minutes on two cores.
    "MobileNetV2": Backbone(
        keras.applications.MobileNetV2,
        32,
        96,
        "block_12_add",
        "tf",
        {"alpha": 1.0},
    ),
    # The Keras Applications recipe: freeze up to and including mixed8
    # (the first 249 layers), fine-tune the top two inception blocks.
    "InceptionV3": Backbone(
        keras.applications.InceptionV3,
        75,
        75,
        "mixed8",
        "tf",
    ),
    "ResNet50": Backbone(
        keras.applications.ResNet50,
        32,
        32,
        "conv4_block6_out",
        "caffe",
    ),
}


def build_model(
    backbone: Backbone, weights: str | None, classes: int, size: int
) -> keras.Sequential:
    """The backbone's preprocessing ("preprocess", in the model so that
    predictions on files and exports carry it), the backbone split into
    "bottom" and "top", plus a new "head"."""
    base = backbone.build(
        input_shape=(size, size, 3),
        include_top=False,
        weights=weights,
        **backbone.options,
    )
    if weights is None:
        # The applications' BatchNormalization keeps 0.999 of its moving
        # statistics per step, tuned for ImageNet's long training; over a few
        # hundred steps from scratch they would barely leave their start.
        for layer in base.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = 0.9
    preprocess = LayerGroup(
        "preprocess",
        [ImagenetPreprocessing(backbone.preprocessing)],
        input_shape=(size, size, 3),
    )
    bottom, top = LayerGroup.split(base, at=backbone.cut, names=["bottom", "top"])
    head = LayerGroup(
        "head",
        [
            layers.GlobalAveragePooling2D(),
            layers.Dense(128, activation="relu"),
            layers.Dense(classes, activation="softmax"),
        ],
    )
    return preprocess + bottom + top + head


def digits_as_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 digits (n, 28, 28) -> images (n, size, size, 3), pixels 0-255."""
    out = np.empty((len(images), size, size, 3), "float32")
    for start in range(0, len(images), 2048):  # Bounded memory for the resize.
        block = tf.image.resize(
            images[start : start + 2048, :, :, None].astype("float32"), (size, size)
        )
        out[start : start + 2048] = tf.repeat(block, 3, axis=-1).numpy()
    return out


def folder_datasets(folder: str, size: int, batch_size: int, seed: int):
    """Training and validation datasets (80/20) of a folder of class
    subfolders, and the class names; the model preprocesses them."""
    train, validation = keras.utils.image_dataset_from_directory(
        folder,
        image_size=(size, size),
        batch_size=batch_size,
        validation_split=0.2,
        subset="both",
        seed=seed,
    )
    return train, validation, train.class_names


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--backbone",
        choices=sorted(BACKBONES),
        default="MobileNetV2",
        help="the keras.applications backbone (default: MobileNetV2, alpha 1.0)",
    )
    parser.add_argument(
        "--weights",
        default="none",
        metavar="imagenet|PATH|none",
        help="the backbone's starting weights: ImageNet's (a download), a "
        "weights file, or none, in which case it is first trained on the digits "
        "0-4 (default: none)",
    )
    parser.add_argument(
        "--images",
        metavar="DIR",
        help="a folder with one subfolder of images per class, instead of the "
        "digits 5-9 (80%% to train, 20%% to validate); needs --weights imagenet "
        "or PATH: the digits do not pretrain a backbone for your images",
    )
    parser.add_argument(
        "--data",
        metavar="PATH",
        help="MNIST as for examples/mnist_digits.py (default: download, else the "
        "shipped sample)",
    )
    parser.add_argument(
        "--epochs",
        type=_positive_int,
        default=10,
        help="epochs of the head and top stages (default: 10)",
    )
    parser.add_argument(
        "--pretrain-epochs",
        type=_positive_int,
        default=5,
        help="epochs on the digits 0-4 without --weights (default: 5)",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=64,
        help="samples per step (default: 64)",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=2e-3,
        help="Adam's learning rate; the top blocks get a tenth (default: 2e-3)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for Python, NumPy and TensorFlow (default: 0)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="folder that keeps the run (checkpoints, report, figures)",
    )
    parser.add_argument(
        "--no-feature-cache",
        dest="feature_cache",
        action="store_false",
        help="run the frozen layers on every step instead of once",
    )
    parser.add_argument(
        "--verbose",
        choices=["auto", "0", "1", "2"],
        default="auto",
        help="Keras progress output (default: auto)",
    )
    args = parser.parse_args(argv)
    if args.weights.lower() == "none":
        args.weights = None
        if args.images:
            parser.error(
                "--images needs pretrained weights: with --weights none the "
                "backbone would stay random, since it is pretrained only on the "
                "digits, and a head on a random frozen backbone learns next to "
                "nothing, about chance. Pass --weights "
                "imagenet (a download) or --weights PATH (a weights file of "
                "the backbone without its top)."
            )
    elif args.weights != "imagenet" and not Path(args.weights).is_file():
        parser.error(
            f"--weights: expected imagenet, none or the path of a weights file; "
            f"no file at {args.weights!r}"
        )
    return args


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, received {text!r}"
        )
    return value


def make_backbone_model(
    args, backbone: Backbone, classes: int, size: int
) -> keras.Sequential:
    """The model, or a one-line `OSError` when ImageNet weights cannot be had."""
    try:
        return build_model(backbone, args.weights, classes, size)
    except Exception as error:
        if args.weights != "imagenet":
            raise
        reason = str(error).splitlines()[0].split(" -- ")[-1][:160]
        raise OSError(
            f"could not download the ImageNet weights of {args.backbone} "
            f"({reason}). "
            "Without network access, run with --weights none (the backbone is "
            "first trained on the digits 0-4) or --weights PATH (a weights file "
            "fetched elsewhere, e.g. from ~/.keras/models/)."
        ) from error


def run_stages(run, args, train, test, pretrain) -> PhaseResult:
    """Pretrains (offline), then the head, the top blocks and all of it;
    returns the last stage's result."""
    if pretrain is not None:
        run.train(
            pretrain[0],
            epochs=args.pretrain_epochs,
            validation_data=pretrain[1],
            name="pretrain",
            backbone_batch_norm="train",  # A backbone trained from scratch.
        )
    run.fine_tune(
        train,
        freeze=["bottom", "top"],
        epochs=args.epochs,
        validation_data=test,
        name="head",
    )
    run.unfreeze("top")
    run.train(
        train,
        epochs=args.epochs,
        validation_data=test,
        name="top",
        lr_multipliers={"top": 0.1},
    )
    # The Keras guide's last step: the whole backbone, at a low rate.
    run.unfreeze("bottom")
    return run.train(
        train,
        epochs=args.epochs,
        validation_data=test,
        name="all",
        lr_multipliers={"bottom": 0.3, "top": 0.3},
    )


def main(argv=None) -> dict:
    """Runs the stages; returns the report (also written with --out)."""
    args = parse_args(argv)
    if args.out:
        ensure_writable(args.out)
    keras.utils.set_random_seed(args.seed)
    backbone = BACKBONES[args.backbone]
    size = backbone.pretrained_size if args.weights == "imagenet" else backbone.size

    if args.images:
        train, test, names = folder_datasets(
            args.images, size, args.batch_size, args.seed
        )
        source, classes, pretrain = args.images, len(names), None
    else:
        data = mnist.load(args.data)
        if data.notice:
            print(data.notice, flush=True)
        x_train = digits_as_images(data.x_train, size)
        x_test = digits_as_images(data.x_test, size)
        digits = [range(0, 5), range(5, 10)]
        low, train = split_classes(x_train, data.y_train, digits)
        low_test, test = split_classes(x_test, data.y_test, digits)
        del x_train, x_test
        source, classes, names = data.source, 5, None
        pretrain = None if args.weights else (low, low_test)

    run = TransferRun(
        make_backbone_model(args, backbone, classes, size),
        optimizer=lambda: keras.optimizers.Adam(args.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        batch_size=args.batch_size,
        verbose=args.verbose if args.verbose == "auto" else int(args.verbose),
        directory=args.out,
        seed=args.seed,
        speed=Speed(
            feature_cache=args.feature_cache,
            # A folder's images, unaugmented, are the same each epoch.
            cache_datasets=True,
        ),
    )
    # A rerun restores finished stages (one line each) and resumes the rest.
    run_stages(run, args, train, test, pretrain)

    # One call: every stage, the test data's confusion matrix and worst
    # mistakes, the time of every process; written into --out.
    report = run.report(
        test,
        dataset=source,
        batch_size=256,
        settings={
            "backbone": args.backbone,
            "cut": backbone.cut,
            "input": f"{size}x{size}x3",
            "weights": args.weights or "none (pretrained on the digits 0-4)",
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "optimizer": f"Adam(learning_rate={args.learning_rate})",
            "seed": args.seed,
            "feature_cache": args.feature_cache,
            "class_names": names,
        },
    )
    print()
    for phase in report["phases"]:
        print(format_phase(phase), end="\n\n")
    print(f"Total: {report['total_seconds']:.1f} s on {source}")
    print("\n" + "\n".join(format_top_losses(report)))
    if args.out:
        print(f"Wrote {args.out}/report.json and {args.out}/report.md")
        print(figures_line(report))
    run.close()  # Another process may now write the folder.
    return report


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as interrupt:
        print(f"\n{interrupt or 'Interrupted.'}", file=sys.stderr)
        sys.exit(130)
    except (OSError, ValueError, FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
