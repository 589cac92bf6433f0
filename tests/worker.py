"""One worker of a two-process MultiWorkerMirroredStrategy run, started by
`test_multi_worker` on 127.0.0.1 ports.

    python tests/worker.py INDEX PORT0,PORT1 --directory DIR --out FILE

It trains a tiny two-phase plan (train everything, then fine-tune the head
with the features frozen) with `directory` as the run's folder, and writes
what the test compares to `--out` (an .npz): the weights, each phase's
result, and the evaluation. Errors go to stderr as `ERROR Type: message`,
with exit status 3.
"""

import argparse
import json
import os
import sys
import time

from tiny import run_options


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("index", type=int)
    parser.add_argument("ports")
    parser.add_argument("--directory")
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, nargs=2, default=(2, 3))
    parser.add_argument(
        "--epoch-seconds",
        type=float,
        default=0.0,
        help="sleep this long after every fine-tuning epoch",
    )
    parser.add_argument(
        "--dataset",
        action="store_true",
        help="fine-tune on a tf.data.Dataset instead of arrays",
    )
    parser.add_argument(
        "--refusals", action="store_true", help="also print what is refused"
    )
    return parser.parse_args()


def main():
    args = parse_args()
    workers = [f"127.0.0.1:{port}" for port in args.ports.split(",")]
    os.environ["TF_CONFIG"] = json.dumps(
        {
            "cluster": {"worker": workers},
            "task": {"type": "worker", "index": args.index},
        }
    )
    import tensorflow as tf

    # Made before anything else of TensorFlow runs, as it requires.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import keras
    import numpy as np
    from tiny import make_data, make_model

    from transferkit import TransferRun

    class Slow(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            time.sleep(args.epoch_seconds)

    def run(**kwargs):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = make_model(dropout=True)
        return TransferRun(
            model,
            optimizer=lambda: keras.optimizers.SGD(0.05, momentum=0.9),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            batch_size=16,
            verbose=0,
            seed=1,
            strategy=strategy,
            **run_options(kwargs),
        )

    data, validation = make_data(samples=64), make_data(samples=30, seed=1)
    if args.refusals:
        try:
            run(training_loop="fit")
        except ValueError as error:
            print(f"REFUSED {error}", flush=True)

    transfer = run(directory=args.directory)
    for name, done, epochs, finished in transfer.saved_phases:
        state = "finished" if finished else f"resuming after epoch {done} of {epochs}"
        print(f"PHASE {name}: {state}", flush=True)
    first, last = args.epochs
    tuning = data
    if args.dataset:
        tuning = tf.data.Dataset.from_tensor_slices(data).shuffle(64).batch(16)
    results = [
        transfer.train(data, epochs=first, validation_data=validation),
        transfer.fine_tune(
            tuning,
            freeze="features",
            epochs=last,
            validation_data=validation,
            callbacks=[Slow()],
        ),
    ]
    evaluation = transfer.evaluate(validation)
    np.savez(
        args.out,
        *[np.asarray(keras.ops.convert_to_numpy(w)) for w in transfer.model.weights],
        results=json.dumps([result.to_dict() for result in results]),
        evaluation=json.dumps(evaluation),
        is_chief=transfer.is_chief,
    )
    print("DONE", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # The test reads the type and the message.
        print(f"ERROR {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        sys.exit(3)
