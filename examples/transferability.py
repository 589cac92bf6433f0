"""How transferable are features? Yosinski et al. (2014), Figure 2, on digits.

J. Yosinski, J. Clune, Y. Bengio and H. Lipson, "How transferable are
features in deep neural networks?", NeurIPS 2014, split the ImageNet classes
into halves A and B, trained a base network on each (baseA, baseB), and then,
for each layer n, four networks on B whose first n layers were copied:

- BnB: from baseB, frozen; the layers above re-initialised and trained on B;
- BnB+: the same, but every layer trained (fine-tuned);
- AnB: from baseA, frozen; the layers above re-initialised and trained on B;
- AnB+: the same, fine-tuned.

Here the classes are the digits 0-4 (A) and 5-9 (B), and the network is a
small convnet of one group per weighted layer ("g1" ... "g4", then "head").
Each network trains with `TransferRun`; the copies are made with
`clone_model`, `copy_groups` and `reinitialize_groups`; `compare_groups`
proves, after training, that the frozen groups of every BnB and AnB network
still equal those of its base, bitwise. One CSV in `--out` holds a row per
(seed, variant, n), and every network has its run folder beside it: the same
command again skips the rows already there and resumes a network cut short.

    python examples/transferability.py                 # the shipped digits
    python examples/transferability.py --data mnist.npz --seeds 0 1 2

It writes `results.csv` and `transferability.png` (matplotlib, the `plots`
extra) to `--out`, and prints the table. See docs/transferability.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import zlib
from pathlib import Path

import keras
import numpy as np
from keras import layers

from transferkit import (
    LayerGroup,
    PhaseResult,
    TransferRun,
    clone_model,
    compare_groups,
    copy_groups,
    reinitialize_groups,
    split_classes,
)
from transferkit.datasets import mnist
from transferkit.records import (
    ensure_writable,
    read_results_table,
    results_table,
    write_results_table,
)

GROUPS = ("g1", "g2", "g3", "g4", "head")
"""One group per weighted layer; n copies the first n."""

CUTS = tuple(range(1, len(GROUPS) - 1 + 1))
"""Every n from 1 to the number of groups below the head."""

VARIANTS = ("BnB", "BnB+", "AnB", "AnB+")
"""The variants of Figure 2: the base copied from, and `+` for fine-tuned."""

HALVES = {"A": range(0, 5), "B": range(5, 10)}

TABLE_FILE = "results.csv"
FIGURE_FILE = "transferability.png"
TYPES = {"seed": int, "n": int, "same_as_base": bool}
"""How the user's columns of the results table read back."""


def build_model() -> keras.Sequential:
    """Two convolutions and two dense layers, each its own group, and a
    softmax head for five classes."""
    return (
        LayerGroup(
            "g1",
            [layers.Conv2D(16, 3, activation="relu"), layers.MaxPooling2D(2)],
            input_shape=(28, 28, 1),
        )
        + LayerGroup(
            "g2",
            [
                layers.Conv2D(32, 3, activation="relu"),
                layers.MaxPooling2D(2),
                layers.Flatten(),
            ],
        )
        + LayerGroup("g3", [layers.Dense(128, activation="relu")])
        + LayerGroup("g4", [layers.Dense(64, activation="relu")])
        + LayerGroup("head", [layers.Dense(5, activation="softmax")])
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data",
        metavar="PATH",
        help="a Keras-layout mnist.npz, or a folder with the four MNIST IDX "
        "files (gzipped or not). Default: the 10,000 digits shipped with "
        "transferkit (offline).",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1],
        metavar="SEED",
        help="one study per seed: the networks' initial weights and the "
        "order of the samples (default: 0 1)",
    )
    parser.add_argument(
        "--epochs",
        type=_positive_int,
        default=4,
        help="epochs of every network, bases included (default: 4)",
    )
    parser.add_argument(
        "--cuts",
        type=_cut,
        nargs="+",
        default=list(CUTS),
        metavar="N",
        help=f"the n to copy (default: {' '.join(map(str, CUTS))})",
    )
    parser.add_argument(
        "--variants",
        choices=VARIANTS,
        nargs="+",
        default=list(VARIANTS),
        help=f"the variants to train (default: {' '.join(VARIANTS)})",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=64,
        help="samples per step (default: 64)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        default="runs/transferability",
        help="folder of the study: results.csv (a rerun skips its rows), a "
        "run folder per network, the figure (default: runs/transferability)",
    )
    return parser.parse_args(argv)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, received {text!r}"
        )
    return int(text)


def _cut(text: str) -> int:
    if not text.isdigit() or int(text) not in CUTS:
        raise argparse.ArgumentTypeError(
            f"expected n in {list(CUTS)} (the groups below the head), received {text!r}"
        )
    return int(text)


def load_halves(path):
    """The digits of `path` (or the shipped sample) as the training and test
    subsets of A and B, and where they came from."""
    data = mnist.load(path) if path is not None else mnist.load_sample()
    x_train, x_test = to_model_input(data.x_train), to_model_input(data.x_test)
    halves = list(HALVES.values())
    train = dict(zip(HALVES, split_classes(x_train, data.y_train, halves), strict=True))
    test = dict(zip(HALVES, split_classes(x_test, data.y_test, halves), strict=True))
    return train, test, data.source


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 images (n, 28, 28) -> float32 in [0, 1], shape (n, 28, 28, 1)."""
    return np.divide(images.reshape(-1, 28, 28, 1), np.float32(255), dtype="float32")


def derived_seed(seed: int, role: str) -> int:
    """A seed of its own for each role (`baseA`, `upper-2`) within a study's
    seed, the same in every process."""
    return zlib.crc32(f"{seed}/{role}".encode()) & 0x7FFFFFFF


class Study:
    """The networks of one `--out` folder: trains what its table lacks."""

    def __init__(self, args, train, test):
        self.args, self.train_data, self.test_data = args, train, test
        self.out = ensure_writable(args.out)
        self.table_path = self.out / TABLE_FILE
        self.table = []
        if self.table_path.exists():
            self.table = read_results_table(self.table_path, types=TYPES)
        self._check_epochs()
        self.bases: dict[str, keras.Model] = {}

    def _check_epochs(self) -> None:
        other = {row["epochs"] for row in self.table} - {self.args.epochs}
        if other:
            raise ValueError(
                f"{str(self.table_path)!r} holds networks trained for "
                f"{sorted(other)} epochs; this study trains {self.args.epochs}. "
                "Pass the same --epochs, or another --out."
            )

    def done(self, seed: int, variant: str, n: int | None) -> bool:
        return any(
            (row["seed"], row["variant"], row["n"]) == (seed, variant, n)
            for row in self.table
        )

    def run(self, seed: int) -> None:
        """Every network of one seed that the table lacks."""
        wanted = [
            (variant, n)
            for n in self.args.cuts
            for variant in self.args.variants
            if not self.done(seed, variant, n)
        ]
        if wanted or not all(self.done(seed, f"base{h}", None) for h in HALVES):
            self.bases = {half: self.base(seed, half) for half in HALVES}
        for variant, n in wanted:
            self.variant(seed, variant, n)

    def base(self, seed: int, half: str) -> keras.Model:
        """baseA or baseB: all groups drawn from the seed, trained on the
        half; restored from its run folder when it finished before."""
        model = build_model()
        reinitialize_groups(model, GROUPS, seed=derived_seed(seed, f"base{half}"))
        with self.network_run(model, seed, f"base{half}") as run:
            restored = _finished(run)
            result = run.train(
                self.train_data[half],
                epochs=self.args.epochs,
                validation_data=self.test_data[half],
                name=f"base{half}",
            )
        self.record(seed, f"base{half}", None, result, None, restored)
        return model

    def variant(self, seed: int, variant: str, n: int) -> None:
        """One network on B: the first n groups copied from baseA or baseB,
        the groups above drawn afresh; frozen, or fine-tuned with `+`."""
        base = self.bases[variant[0]]
        model = clone_model(base, weights=False)
        copy_groups(base, model, n)
        reinitialize_groups(model, GROUPS[n:], seed=derived_seed(seed, f"upper-{n}"))
        with self.network_run(model, seed, f"{variant}-{n}") as run:
            restored = _finished(run)
            options = {
                "epochs": self.args.epochs,
                "validation_data": self.test_data["B"],
                "name": variant,
            }
            if variant.endswith("+"):
                result = run.train(self.train_data["B"], **options)
            else:
                result = run.fine_tune(
                    self.train_data["B"], freeze=GROUPS[:n], **options
                )
        same = compare_groups(model, base, n)
        if not variant.endswith("+") and not same:
            raise RuntimeError(f"{variant} n={n}: the frozen groups moved: {same}")
        self.record(seed, variant, n, result, same.equal, restored)

    def network_run(self, model, seed: int, name: str) -> TransferRun:
        return TransferRun(
            model,
            optimizer=lambda: keras.optimizers.Adam(1e-3),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            batch_size=self.args.batch_size,
            directory=self.out / f"seed-{seed}" / name,
            checkpoint_every=self.args.epochs,
            seed=seed,
            verbose=0,
        )

    def record(self, seed, variant, n, result, same_as_base, restored) -> None:
        """Adds the network's row, unless there (a base restored), and
        rewrites the table atomically."""
        if not self.done(seed, variant, n):
            columns = {"seed": seed, "variant": variant, "n": n}
            columns["same_as_base"] = same_as_base
            self.table += results_table([(columns, result)])
            write_results_table(self.table, self.table_path)
        cut = "" if n is None else f" n={n}"
        how = "restored from its run folder" if restored else f"{result.seconds:.1f} s"
        print(
            f"seed {seed} {variant}{cut}: accuracy {result.metrics['accuracy']:.4f} "
            f"({how}{_proof(result, same_as_base)})",
            flush=True,
        )


def _finished(run: TransferRun) -> bool:
    """Whether the run's folder holds its phase, finished."""
    return any(finished for *_, finished in run.saved_phases)


def _proof(result: PhaseResult, same_as_base) -> str:
    if same_as_base is None or not result.frozen_groups:
        return ""
    groups = "+".join(result.frozen_groups)
    return f"; frozen {groups} bitwise equal to the base's"


def summary(table, seeds) -> dict[tuple[str, int | None], list[float]]:
    """Accuracy on the test digits of the half, by (variant, n), one value
    per seed of `seeds` that has it."""
    values: dict[tuple[str, int | None], list[float]] = {}
    for row in table:
        if row["seed"] in seeds:
            key = (row["variant"], row["n"])
            values.setdefault(key, []).append(row["val_accuracy"])
    return values


def format_table(values, cuts) -> str:
    """Mean accuracy and its range over the seeds: a row per variant, a
    column per n."""
    width = 22
    lines = [("variant  " + "".join(f"n={n}".ljust(width) for n in cuts)).rstrip()]
    for base in ("baseA", "baseB"):
        if (base, None) in values:
            lines.append(f"{base:<9}{_spread(values[base, None])}")
    for variant in VARIANTS:
        cells = [_spread(values.get((variant, n), [])).ljust(width) for n in cuts]
        lines.append(f"{variant:<9}" + "".join(cells).rstrip())
    return "\n".join(lines)


def _spread(accuracies) -> str:
    if not accuracies:
        return "-"
    mean = statistics.fmean(accuracies)
    if len(accuracies) == 1:
        return f"{100 * mean:.2f}"
    low, high = min(accuracies), max(accuracies)
    return f"{100 * mean:.2f} ({100 * low:.2f}-{100 * high:.2f})"


STYLES = {
    "BnB": ("o", "tab:blue", "white"),
    "BnB+": ("P", "tab:blue", "tab:blue"),
    "AnB": ("D", "tab:red", "white"),
    "AnB+": ("X", "tab:red", "tab:red"),
}
"""Marker, colour and face of each variant: open for frozen, filled for
fine-tuned; blue from baseB, red from baseA."""


def write_figure(values, cuts, path: Path) -> str:
    """Accuracy on B against n: the four variants (mean, and the range over
    the seeds as error bars) and baseB as a line, in full and zoomed in on
    baseB. Returns what was done."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        return "Figure skipped: matplotlib is not installed (the `plots` extra)."
    figure, (full, zoom) = pyplot.subplots(1, 2, figsize=(10, 4))
    for axes in (full, zoom):
        _plot_study(axes, values, cuts)
    if ("baseB", None) in values:
        middle = 100 * statistics.fmean(values["baseB", None])
        zoom.set_ylim(middle - 2.5, middle + 2.5)
    full.set_ylabel("accuracy on B, digits 5-9 (%)")
    full.legend(loc="lower left", ncols=3, fontsize="small")
    zoom.set_title("near baseB", fontsize="medium")
    figure.tight_layout()
    temporary = path.with_name(f".{path.name}.partial.png")
    figure.savefig(temporary, dpi=120)
    pyplot.close(figure)
    os.replace(temporary, path)  # Never half a figure.
    return f"Wrote {path}"


def _plot_study(axes, values, cuts) -> None:
    if ("baseB", None) in values:
        base = values["baseB", None]
        axes.axhline(100 * statistics.fmean(base), color="black", label="baseB")
        axes.axhspan(100 * min(base), 100 * max(base), color="black", alpha=0.1)
    for offset, variant in zip((-0.09, -0.03, 0.03, 0.09), VARIANTS, strict=True):
        shown = [n for n in cuts if values.get((variant, n))]
        if not shown:
            continue
        seeds = [[100 * a for a in values[variant, n]] for n in shown]
        means = [statistics.fmean(each) for each in seeds]
        spread = [
            [m - min(each) for m, each in zip(means, seeds, strict=True)],
            [max(each) - m for m, each in zip(means, seeds, strict=True)],
        ]
        marker, color, face = STYLES[variant]
        axes.errorbar(
            [n + offset for n in shown],
            means,
            yerr=spread,
            fmt=f"{marker}-",
            linewidth=1,
            color=color,
            markerfacecolor=face,
            capsize=3,
            label=variant,
        )
    axes.set_xticks(list(cuts))
    axes.set_xlabel("n: groups copied from the base")


def main(argv=None) -> list[dict]:
    """Trains what the study's table lacks; returns the table."""
    args = parse_args(argv)
    start = time.perf_counter()
    train, test, source = load_halves(args.data)
    study = Study(args, train, test)
    print(
        f"{source}: A {len(train['A'].y)}+{len(test['A'].y)} digits, "
        f"B {len(train['B'].y)}+{len(test['B'].y)}; {study.table_path}: "
        f"{len(study.table)} networks done",
        flush=True,
    )
    for seed in args.seeds:
        study.run(seed)
    values = summary(study.table, set(args.seeds))
    seeds = " ".join(map(str, args.seeds))
    print(
        f"\nAccuracy (%) on the test digits of the half, mean (range) over seeds "
        f"{seeds}; baseA on A, all others on B:"
    )
    print(format_table(values, args.cuts))
    print(write_figure(values, args.cuts, study.out / FIGURE_FILE))
    print(f"Total: {time.perf_counter() - start:.1f} s")
    return study.table


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("\nInterrupted: the same command resumes.", file=sys.stderr)
        sys.exit(130)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
