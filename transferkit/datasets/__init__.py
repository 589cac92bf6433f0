"""Data sets that ship with transferkit or load through Keras: MNIST, with
10,000 real digits inside the package for machines without a network.

>>> from transferkit.datasets import mnist
"""

from transferkit.datasets import mnist

__all__ = ["mnist"]
