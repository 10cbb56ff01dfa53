"""CT window and MR robust scaling: hand-computed values, numpy percentiles, exact inverses."""

import numpy as np
import pytest

from diffma_cli.data.normalise import ct_from_unit, ct_to_unit, mr_from_unit, mr_scaling, mr_to_unit
from diffma_cli.errors import InputError


def test_ct_window_maps_to_unit_interval_by_hand():
    hu = np.array([-2000, -1024, -1000, 988, 3000, 4000], np.int16)
    # (hu + 1024) / 4024 * 2 - 1 by hand: -1000 -> 24/2012 - 1, 988 -> 0.
    expected = np.array([-1.0, -1.0, 24 / 2012 - 1, 0.0, 1.0, 1.0], np.float32)
    unit = ct_to_unit(hu)
    assert unit.dtype == np.float32
    np.testing.assert_allclose(unit, expected, atol=1e-6)
    np.testing.assert_allclose(ct_from_unit(unit), np.clip(hu, -1024, 3000), atol=1e-3)
    np.testing.assert_allclose(ct_to_unit(np.array([0.0]), window=(-100, 100)), [0.0])


def test_ct_window_must_increase():
    with pytest.raises(InputError, match="CT window"):
        ct_to_unit(np.zeros(3), window=(100, -100))


def test_mr_scaling_uses_in_mask_percentiles():
    rng = np.random.default_rng(0)
    mr = rng.gamma(2.0, 300.0, size=(8, 20, 20)).astype(np.float32)
    mask = np.zeros(mr.shape, bool)
    mask[2:6, 5:15, 5:15] = True
    mr[~mask] = 1e6  # outside the mask: must not influence the scaling
    scaling = mr_scaling(mr, mask, (0.5, 99.5))
    assert scaling["low"] == pytest.approx(np.percentile(mr[mask], 0.5))
    assert scaling["high"] == pytest.approx(np.percentile(mr[mask], 99.5))
    unit = mr_to_unit(mr, scaling)
    assert unit.min() == -1.0 and unit.max() == 1.0
    inside = (mr >= scaling["low"]) & (mr <= scaling["high"])
    np.testing.assert_allclose(mr_from_unit(unit, scaling)[inside], mr[inside], rtol=1e-5)
    assert np.mean(np.abs(unit[mask]) < 1) > 0.98  # only the 1 % tails are clipped


def test_mr_scaling_refuses_empty_mask_and_flat_image():
    with pytest.raises(InputError, match="mask is empty"):
        mr_scaling(np.ones((2, 3, 3)), np.zeros((2, 3, 3)))
    with pytest.raises(InputError, match="flat"):
        mr_scaling(np.ones((2, 3, 3)), np.ones((2, 3, 3)))
