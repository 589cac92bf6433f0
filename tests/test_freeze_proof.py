"""The freeze proof: one flipped bit in any variable of a frozen group, or
in its BatchNorm statistics, is named; an untouched group passes."""

import numpy as np
import pytest
from conftest import make_model

from transferkit.phases.freeze_proof import changed_variables, count_params, digest


@pytest.mark.parametrize("which", ["kernel", "moving_variance"])
def test_one_flipped_bit_is_named(which):
    model = make_model(batch_norm=True)
    features = model.groups["features"]
    before = digest([features, model.groups["classifier"]])
    variable = next(v for v in features.variables if v.path.endswith(which))
    bits = np.array(variable.numpy()).view(np.uint32)
    bits.flat[0] ^= 1  # The lowest bit of the first element.
    variable.assign(bits.view(np.float32))

    changed = changed_variables([features, model.groups["classifier"]], before)

    assert changed == (variable.path,)


def test_unchanged_groups_pass_and_digests_are_stable():
    model = make_model(batch_norm=True)
    groups = list(model.groups.values())
    before = digest(groups)
    assert changed_variables(groups, before) == ()
    assert digest(groups) == before
    assert [len(v) for v in before.values()] == [len(g.variables) for g in groups]


def test_count_params_counts_scalars():
    model = make_model()
    assert count_params(model.weights) == model.count_params()
