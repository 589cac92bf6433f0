"""Checking and preparing a phase's data: class subsets, arrays, datasets,
sample and class weights, several inputs, and how images were loaded.
Imports only `utils` and `errors` of transferkit.
"""

__all__: list[str] = []
