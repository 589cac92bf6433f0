"""transferkit's version, in a module that imports nothing, so that the
records and the exported metadata can name it without importing the package
root."""

__version__ = "0.1.0"
