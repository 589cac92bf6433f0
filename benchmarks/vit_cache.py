"""The feature cache below frozen transformer blocks: the top-blocks stage of
a ViT composed from keras-hub's `TransformerEncoder` blocks, each a layer of
its own (so a cut between blocks ends the cache), cached against uncached.

A keras-hub `ViTBackbone` holds its blocks inside one `ViTEncoder` layer,
whose call no cut can enter (`cache_code == "inside_layer"`); composed
block by block, the frozen lower blocks are computed once per phase. Both
stages start from the same weights and train the same top blocks on the
shipped digits 5-9; the figures are steady epochs (the first, with its
trace and the cache, apart) and the accuracy each reaches.

    python benchmarks/vit_cache.py [--epochs 3] [--blocks 8] [--frozen 6]

Needs keras-hub (`pip install 'transferkit[hub]'`).
"""

from __future__ import annotations

import argparse

import keras
import keras_hub
import numpy as np
from machine import cpu_line
from timing import EpochTimes

from transferkit import LayerGroup, Speed, TransferRun, split_classes
from transferkit.datasets import mnist


class AddPositions(keras.layers.Layer):
    """Adds a learned position embedding to a sequence of patches."""

    def build(self, input_shape):
        self.positions = self.add_weight(
            shape=input_shape[1:], initializer="random_normal", name="positions"
        )

    def call(self, x):
        return x + self.positions


def composed_vit(blocks: int, frozen: int, hidden: int = 32) -> keras.Model:
    """Patches, `frozen` blocks ("bottom"), the other blocks ("top") and a
    head, composed with `+`."""
    embed = [
        keras.layers.Conv2D(hidden, 7, strides=7),
        keras.layers.Reshape((16, hidden)),
        AddPositions(),
    ]
    encoder = [
        keras_hub.layers.TransformerEncoder(2 * hidden, num_heads=4, dropout=0.0)
        for _ in range(blocks)
    ]
    bottom = LayerGroup("bottom", embed + encoder[:frozen], input_shape=(28, 28, 1))
    top = LayerGroup("top", encoder[frozen:])
    head = LayerGroup(
        "head",
        [
            keras.layers.LayerNormalization(),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(5),
        ],
    )
    return bottom + top + head


def stage(weights, args, data, cache: bool):
    model = composed_vit(args.blocks, args.frozen)
    model.set_weights(weights)
    clock = EpochTimes()

    run = TransferRun(
        model,
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        batch_size=64,
        verbose=0,
        seed=0,
        speed=Speed(feature_cache=cache),
    )
    high, high_test = data
    result = run.fine_tune(
        high,
        freeze="bottom",
        epochs=args.epochs,
        validation_data=high_test,
        callbacks=[clock],
    )
    return result, clock.times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--frozen", type=int, default=6)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    data = mnist.load_sample()
    classes = [range(5), range(5, 10)]
    x_train = (data.x_train[..., None] / 255.0).astype("float32")
    x_test = (data.x_test[..., None] / 255.0).astype("float32")
    _, high = split_classes(x_train, data.y_train, classes)
    _, high_test = split_classes(x_test, data.y_test, classes)
    weights = composed_vit(args.blocks, args.frozen).get_weights()
    print(cpu_line())
    print(
        f"{args.blocks} blocks, the lower {args.frozen} frozen; "
        f"{high.x.shape[0]} training digits 5-9, {args.epochs} epochs"
    )
    print("| top-blocks stage | cache | first epoch s | steady epoch s | accuracy |")
    print("|---|---|---|---|---|")
    steady = {}
    for cache in (False, True):
        result, times = stage(weights, args, (high, high_test), cache)
        steady[cache] = float(np.median(times[1:])) if len(times) > 1 else times[0]
        print(
            f"| {'cached' if cache else 'uncached'} | {result.cache_code} | "
            f"{times[0]:.2f} | {steady[cache]:.2f} | {result.metrics['accuracy']:.2%} |"
        )
    print(f"steady epoch, uncached / cached: {steady[False] / steady[True]:.1f}x")


if __name__ == "__main__":
    main()
