"""Transfer with a keras-hub ViT, trained in place with groups cut between
its transformer blocks.

1. Pretrain (without `--preset`): a tiny `ViTImageClassifier`, built offline
   from a configuration, learns the shipped digits 0-4. This stands in for
   the pretraining of a preset, offline.
2. Transfer to the digits 5-9 three ways, each from the same pretrained
   weights, each an ordinary phase with its freeze proof:
   - "head only": every block frozen, the classifier trains;
   - "top blocks, layer decay": the embedding and the lower blocks frozen,
     the top blocks train with layer-wise learning-rate decay (0.75 per
     block from the head down);
   - "LoRA": the same blocks adapted with rank-4 LoRA instead of trained
     (`lora={...}`); the base weights are proven unchanged and the adapters
     are folded into the kernels at the end.

The table gives accuracy on the test digits 5-9, seconds and trainable
parameters per way. Needs keras-hub: `pip install "transferkit[hub]"`.

    python examples/vit_digits.py
    python examples/vit_digits.py --epochs 1 --pretrain-epochs 1
    python examples/vit_digits.py --preset vit_base_patch16_224_imagenet  # network
"""

from __future__ import annotations

import argparse
import sys
import time

import keras
import numpy as np

from transferkit import LayerGroup, TransferRun, attach_groups, split_classes
from transferkit.datasets import mnist
from transferkit.run import layer_decay

TOP_BLOCKS = 2


def build_task(preset: str | None, blocks: int) -> keras.Model:
    """A ViT classifier of 5 classes: from `preset`, or tiny and offline."""
    import keras_hub

    if preset is not None:
        return keras_hub.models.ViTImageClassifier.from_preset(preset, num_classes=5)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(28, 28, 1),
        patch_size=7,
        num_layers=blocks,
        num_heads=4,
        hidden_dim=32,
        mlp_dim=64,
    )
    return keras_hub.models.ViTImageClassifier(
        backbone=backbone, num_classes=5, preprocessor=None
    )


def block_groups(task: keras.Model) -> tuple[LayerGroup, ...]:
    """The embedding, one group per transformer block, and the head (the
    encoder's last norm and the classifier)."""
    encoder = f"{task.backbone.name}/vit_encoder"
    return LayerGroup.match(
        task,
        {
            "embed": f"{task.backbone.name}/vit_patching_and_embedding",
            "block": rf"{encoder}/transformer_block_(\d+)",
            "head": rf"{encoder}/ln|predictions",
        },
    )


def digits(preset: str | None, image_size: int, samples: int | None = None):
    """The shipped digits (the first `samples` of each split, or all), scaled
    to [0, 1]: 0-4 and 5-9, train and test; resized and given three channels
    for a preset."""
    data = mnist.load_sample()
    prepared = []
    for images in (data.x_train[:samples], data.x_test[:samples]):
        x = (images[..., None] / 255.0).astype("float32")
        if preset is not None:
            x = np.repeat(keras.ops.image.resize(x, (image_size,) * 2), 3, axis=-1)
        prepared.append(np.asarray(x))
    classes = [range(5), range(5, 10)]
    low, high = split_classes(prepared[0], data.y_train[:samples], classes)
    low_test, high_test = split_classes(prepared[1], data.y_test[:samples], classes)
    return low, low_test, high, high_test


def make_run(task, args) -> TransferRun:
    return TransferRun(
        attach_groups(task, block_groups(task)),
        optimizer=keras.optimizers.Adam(args.learning_rate),
        # keras-hub's classifiers give logits (activation=None).
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        batch_size=args.batch_size,
        verbose=0,
        seed=args.seed,
    )


def transfer_ways(names: list[str]) -> dict[str, dict]:
    """Each way's phase options: what it freezes, and how the top trains."""
    top = names[-1 - TOP_BLOCKS : -1]
    frozen = [name for name in names[:-1] if name not in top]
    return {
        "head only": {"freeze": names[:-1]},
        "top blocks, layer decay 0.75": {
            "freeze": frozen,
            "lr_multipliers": layer_decay([*top, names[-1]], 0.75),
        },
        "LoRA rank 4 on the top blocks": {
            "freeze": frozen,
            "lora": dict.fromkeys(top, 4),
        },
    }


def main(argv=None) -> dict[str, dict]:
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    pretrained = build_task(args.preset, args.blocks)
    size = pretrained.backbone.image_shape[0] if args.preset else 28
    low, low_test, high, high_test = digits(args.preset, size, args.samples)
    if args.preset is None:
        run = make_run(pretrained, args)
        first = run.train(low, epochs=args.pretrain_epochs, validation_data=low_test)
        print(
            f"Pretrained on the digits 0-4: {first.metrics['accuracy']:.2%} "
            f"({first.seconds:.1f} s)"
        )
    weights = pretrained.get_weights()
    rows = {}
    names = [group.name for group in block_groups(pretrained)]
    for way, options in transfer_ways(names).items():
        task = build_task(args.preset, args.blocks)
        task.set_weights(weights)
        run = make_run(task, args)
        started = time.perf_counter()
        result = run.fine_tune(
            high, epochs=args.epochs, validation_data=high_test, **options
        )
        rows[way] = {
            "accuracy": result.metrics["accuracy"],
            "seconds": time.perf_counter() - started,
            "trainable_params": result.trainable_params,
            "frozen_unchanged": result.frozen_unchanged,
        }
    print_table(rows)
    return rows


def print_table(rows: dict[str, dict]) -> None:
    print("| way | accuracy on 5-9 | seconds | trainable parameters | frozen proven |")
    print("|---|---|---|---|---|")
    for way, row in rows.items():
        print(
            f"| {way} | {row['accuracy']:.2%} | {row['seconds']:.1f} | "
            f"{row['trainable_params']:,} | {row['frozen_unchanged']} |"
        )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--epochs", type=int, default=3, help="epochs per way")
    parser.add_argument(
        "--pretrain-epochs", type=int, default=4, help="epochs on the digits 0-4"
    )
    parser.add_argument("--blocks", type=int, default=4, help="transformer blocks")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--samples", type=int, default=None, help="use the first N digits of each split"
    )
    parser.add_argument(
        "--preset",
        default=None,
        help="a keras-hub ViTImageClassifier preset (needs the network); "
        "skips the pretraining on 0-4",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
