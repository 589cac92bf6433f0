"""Times `run.search_freeze` against the same candidates run as separate
`fine_tune` calls, and checks that they give the same results.

Each candidate of the search is what a separate `fine_tune` from the same
weights gives; the search computes the frozen prefix once (each cut's
features carried on from the cut before) where the separate calls compute it
once per candidate. Both start from the same trained weights, at the run's
first phase (so the seeds match), with the run's seed.

    python benchmarks/freeze_search.py --case digits --data ../shared/data/mnist-10k.npz
    python benchmarks/freeze_search.py --case layers --data ../shared/data/mnist-10k.npz
    python benchmarks/freeze_search.py --case mobilenetv2

Cases: `digits`, the reference example's model (two groups: `features`,
`classifier`) fine-tuned on 5-9 after a phase on 0-4; `layers`, the same
convnet with one group per layer that holds weights (the transferability
study's cut); `mobilenetv2`, MobileNetV2 (random weights) at 96x96 cut into
its stages, with a pooled dense head, on random images.

Prints, per candidate: the search's seconds, the separate call's, whether
the histories are bitwise equal, and how the features came; then the totals,
their ratio, and the part no sharing can remove: the candidates' training
after their cache (the same arithmetic in both).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from machine import cpu_line


def _digits(path: str, count: int):
    data = np.load(path)
    x = np.concatenate([data["x_train"], data["x_test"]])[:count]
    y = np.concatenate([data["y_train"], data["y_test"]])[:count]
    x = (x.reshape(-1, 28, 28, 1) / np.float32(255)).astype("float32")
    return x, y.astype("int64")


def _model(case: str):
    import keras
    from keras import layers

    from transferkit import LayerGroup
    from transferkit.backbones import load_backbone

    keras.utils.set_random_seed(1)
    if case == "digits":
        import mnist_digits

        return mnist_digits.build_model()
    if case == "layers":
        groups = [
            LayerGroup(
                "conv1",
                [layers.Conv2D(32, 3, activation="relu")],
                input_shape=(28, 28, 1),
            ),
            LayerGroup(
                "conv2",
                [layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(2)],
            ),
            LayerGroup(
                "conv3",
                [
                    layers.Conv2D(64, 3, activation="relu"),
                    layers.MaxPooling2D(2),
                    layers.Flatten(),
                ],
            ),
            LayerGroup("dense", [layers.Dense(128, activation="relu")]),
            LayerGroup("head", [layers.Dense(5, activation="softmax")]),
        ]
    else:
        backbone = load_backbone("MobileNetV2", weights=None, image_size=96)
        head = LayerGroup(
            "head",
            [layers.GlobalAveragePooling2D(), layers.Dense(5, activation="softmax")],
        )
        groups = [*backbone.groups, head]
    model = groups[0]
    for group in groups[1:]:
        model = model + group
    return model


def _data(args):
    if args.case == "mobilenetv2":
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 255, (args.samples + 400, 96, 96, 3)).astype("float32")
        y = rng.integers(0, 5, len(x))
        return (x[:400], y[:400]), (x[400:], y[400:]), (x[400:600], y[400:600])
    x, y = _digits(args.data, 10_000)
    old, new = y < 5, y >= 5
    train = (x[new][: args.samples], y[new][: args.samples] - 5)
    validation = (
        x[new][args.samples : args.samples + 1000],
        y[new][args.samples : args.samples + 1000] - 5,
    )
    return (x[old][: args.samples], y[old][: args.samples]), train, validation


def _run(model, args):
    from transferkit import TransferRun

    return TransferRun(
        model,
        optimizer=args.optimizer,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        batch_size=args.batch_size,
        seed=0,
        verbose=0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--case", choices=["digits", "layers", "mobilenetv2"], default="digits"
    )
    parser.add_argument("--data", default="../shared/data/mnist-10k.npz")
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--repeats", type=int, default=2, help="rounds (default: 2)")
    args = parser.parse_args()
    print(cpu_line())
    old, train, validation = _data(args)
    model = _model(args.case)
    first = _run(model, args)
    first.train(old, epochs=1)  # The weights both start from.
    start = [v.numpy() for v in model.weights]
    flags = [layer.trainable for layer in model._flatten_layers(include_self=False)]

    def restore():
        for variable, value in zip(model.weights, start, strict=True):
            variable.assign(value)
        for layer, flag in zip(
            model._flatten_layers(include_self=False), flags, strict=True
        ):
            layer.trainable = flag

    def searched():
        restore()
        began = time.perf_counter()
        found = _run(model, args).search_freeze(
            train, validation_data=validation, epochs=args.epochs
        )
        return found, time.perf_counter() - began

    def separately(frozen_lists):
        timed = []
        for frozen in frozen_lists:
            restore()
            began = time.perf_counter()
            alone = _run(model, args).fine_tune(
                train, freeze=list(frozen), epochs=args.epochs,
                validation_data=validation,
            )  # fmt: skip
            timed.append((alone, time.perf_counter() - began))
        return timed

    # Rounds in alternating order (the first work of a process pays for
    # warming up): the search first in round 1, the separate calls in round 2.
    search, seconds = searched()
    searched_seconds = [seconds]
    frozen = [row.frozen for row in search.rows]
    separate_runs = [separately(frozen)]
    for _ in range(1, args.repeats):
        separate_runs.append(separately(frozen))
        searched_seconds.append(searched()[1])
    print(search.table())
    searched = min(searched_seconds)
    best = min(separate_runs, key=lambda timed: sum(s for _, s in timed))
    separate = sum(seconds for _, seconds in best)
    training = sum(alone.seconds - alone.cache_seconds for alone, _ in best)
    rows = [
        (row, seconds, alone.history == row.result.history, alone.cache_seconds)
        for row, (alone, seconds) in zip(search.rows, best, strict=True)
    ]
    same_everywhere = all(
        alone.history == row.result.history
        for timed in separate_runs
        for row, (alone, _) in zip(search.rows, timed, strict=True)
    )
    print(
        f"\n{args.repeats} rounds: search {[round(s, 1) for s in searched_seconds]} s; "
        f"separate {[round(sum(s for _, s in t), 1) for t in separate_runs]} s; "
        f"every round bitwise equal: {same_everywhere}"
    )

    print(
        f"\ncase {args.case}: {len(train[0])} training samples, "
        f"{len(validation[0])} validation, {args.epochs} epochs per candidate"
    )
    print(
        f"{'frozen':<40} {'search s':>9} {'alone s':>9} {'alone cache s':>14}"
        "  equal  features"
    )
    for row, seconds, same, cache in rows:
        print(
            f"{'+'.join(row.frozen) or '(nothing)':<40.40} {row.seconds:9.1f} "
            f"{seconds:9.1f} {cache:14.1f}  {'yes' if same else 'NO':<5}  {row.cache}"
        )
    print(
        f"\nbest of the rounds: search {searched:.1f} s; separate fine_tune calls "
        f"{separate:.1f} s; "
        f"ratio {searched / separate:.2f} (target <= 0.5)"
    )
    print(
        f"the candidates' training after their cache (the same arithmetic in both): "
        f"{training:.1f} s = {training / separate:.0%} of the separate calls; "
        f"{search.shared_cache}"
    )


if __name__ == "__main__":
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
    main()
