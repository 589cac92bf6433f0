"""Checking and preparing a phase's data: class subsets, arrays, datasets,
sample and class weights, several inputs, and how images were loaded.
Imports only `utils` and `errors` of transferkit.
"""

from transferkit.data.class_subset import ClassSubset, split_classes

__all__ = ["ClassSubset", "split_classes"]
