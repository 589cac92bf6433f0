"""The reference experiment as a plain Keras 3 script, for comparison.

A faithful Keras 3 port of the classic `mnist_transfer_cnn.py`: one
Sequential, `fit` on NumPy arrays, batch 128, Adadelta with the Keras 2
learning rate of 1.0, categorical cross-entropy; train on the digits 0-4,
set `trainable = False` on the feature layers, recompile, fine-tune on 5-9.
The frozen layers still run forward on every step of the second phase, and
its Dropout still drops, as in the original. It uses no transferkit code.

    python benchmarks/plain_keras_transfer.py --data mnist.npz

Prints one JSON line: seconds, test loss and accuracy per phase.
"""

import argparse
import json
import time

import keras
import numpy as np
from keras import layers

BATCH_SIZE = 128
NUM_CLASSES = 5


def train_model(model, train, test, epochs, verbose):
    """Compiles, fits and evaluates, as the original's `train_model`."""
    x_train = train[0].reshape((-1, 28, 28, 1)).astype("float32") / 255
    x_test = test[0].reshape((-1, 28, 28, 1)).astype("float32") / 255
    y_train = keras.utils.to_categorical(train[1], NUM_CLASSES)
    y_test = keras.utils.to_categorical(test[1], NUM_CLASSES)
    model.compile(
        loss="categorical_crossentropy",
        optimizer=keras.optimizers.Adadelta(learning_rate=1.0),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(
        x_train,
        y_train,
        batch_size=BATCH_SIZE,
        epochs=epochs,
        verbose=verbose,
        validation_data=(x_test, y_test),
    )
    seconds = time.perf_counter() - start
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return {"seconds": seconds, "test_loss": loss, "test_accuracy": accuracy}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a Keras-layout mnist.npz")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=0)
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)

    with np.load(args.data) as data:
        x_train, y_train = data["x_train"], data["y_train"]
        x_test, y_test = data["x_test"], data["y_test"]
    low_train, low_test = y_train < 5, y_test < 5

    feature_layers = [
        layers.Conv2D(32, 3, padding="valid"),
        layers.Activation("relu"),
        layers.Conv2D(32, 3),
        layers.Activation("relu"),
        layers.MaxPooling2D(pool_size=2),
        layers.Dropout(0.25),
        layers.Flatten(),
    ]
    classification_layers = [
        layers.Dense(128),
        layers.Activation("relu"),
        layers.Dropout(0.5),
        layers.Dense(NUM_CLASSES),
        layers.Activation("softmax"),
    ]
    model = keras.Sequential(
        [keras.Input((28, 28, 1)), *feature_layers, *classification_layers]
    )

    first = train_model(
        model,
        (x_train[low_train], y_train[low_train]),
        (x_test[low_test], y_test[low_test]),
        args.epochs,
        args.verbose,
    )
    for layer in feature_layers:
        layer.trainable = False
    second = train_model(
        model,
        (x_train[~low_train], y_train[~low_train] - 5),
        (x_test[~low_test], y_test[~low_test] - 5),
        args.epochs,
        args.verbose,
    )
    print(json.dumps({"phases": [first, second]}))


if __name__ == "__main__":
    main()
