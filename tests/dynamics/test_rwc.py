import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from dpscope.dynamics import rwc_l1, rwc_mean_ratio


def t(values):
    return torch.tensor(values, dtype=torch.float32)


def test_mean_ratio_and_l1_match_hand_computed_values():
    w_prev, w_t = t([1.0, -2.0, 4.0]), t([1.5, -1.0, 4.0])
    # |dw| = [0.5, 1, 0]; |dw| / |w_prev| = [0.5, 0.5, 0]
    assert rwc_mean_ratio(w_t, w_prev) == pytest.approx(1 / 3)
    assert rwc_l1(w_t, w_prev) == pytest.approx(1.5 / 7)


def test_the_two_definitions_differ_when_small_weights_move():
    w_prev, w_t = t([0.01, 10.0]), t([0.02, 10.0])
    assert rwc_mean_ratio(w_t, w_prev) == pytest.approx(0.5)  # (1.0 + 0) / 2
    assert rwc_l1(w_t, w_prev) == pytest.approx(0.01 / 10.01)


def test_zero_elements_of_w_prev_are_left_out_of_the_mean_ratio():
    w_prev, w_t = t([[0.0, 2.0], [0.0, -4.0]]), t([[1.0, 3.0], [5.0, -4.0]])
    assert rwc_mean_ratio(w_t, w_prev) == pytest.approx((0.5 + 0.0) / 2)
    assert rwc_l1(w_t, w_prev) == pytest.approx(7.0 / 6.0)


def test_all_zero_previous_weights_count_as_entirely_new_or_unchanged():
    zeros = torch.zeros(3, 2)
    assert rwc_mean_ratio(zeros, zeros) == 0.0
    assert rwc_l1(zeros, zeros) == 0.0
    grown = zeros.clone()
    grown[1, 0] = -0.3
    assert rwc_mean_ratio(grown, zeros) == 1.0
    assert rwc_l1(grown, zeros) == 1.0


def test_matches_numpy_reference_on_a_conv_kernel_with_zeros():
    gen = torch.Generator().manual_seed(0)
    w_prev = torch.randn(8, 3, 3, 3, generator=gen)
    w_prev[w_prev.abs() < 0.3] = 0.0
    w_t = w_prev + 0.05 * torch.randn(8, 3, 3, 3, generator=gen)
    a, b = w_t.double().numpy(), w_prev.double().numpy()
    keep = b != 0
    assert rwc_mean_ratio(w_t, w_prev) == pytest.approx(np.mean(np.abs(a - b)[keep] / np.abs(b[keep])))
    assert rwc_l1(w_t, w_prev) == pytest.approx(np.abs(a - b).sum() / np.abs(b).sum())


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shapes differ"):
        rwc_l1(torch.zeros(2, 3), torch.zeros(3, 2))


finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(finite, finite, st.booleans()), min_size=1, max_size=20))
def test_both_are_finite_and_non_negative_for_any_finite_weights(triples):
    w_prev = t([0.0 if zero else a for a, _, zero in triples])
    w_t = t([b for _, b, _ in triples])
    for value in (rwc_mean_ratio(w_t, w_prev), rwc_l1(w_t, w_prev)):
        assert math.isfinite(value) and value >= 0


def test_weight_scales_are_the_denominators_of_both_forms():
    from dpscope.dynamics.rwc import weight_scales_tensor

    w_prev = t([[0.0, 2.0], [-0.5, -4.0]])
    abs_mean, inv_mean = weight_scales_tensor(w_prev).tolist()
    assert abs_mean == pytest.approx(6.5 / 4)
    assert inv_mean == pytest.approx((0.5 + 2.0 + 0.25) / 3)  # zeros left out, as in the mean ratio
    # a change of the same size everywhere: each RWC form is that size times its scale
    w_t = w_prev + t([[0.1, -0.1], [0.1, 0.1]])
    nonzero = w_prev != 0
    assert rwc_l1(w_t, w_prev) == pytest.approx(0.1 / abs_mean)
    assert rwc_mean_ratio(w_t[nonzero], w_prev[nonzero]) == pytest.approx(0.1 * inv_mean)
    assert weight_scales_tensor(torch.zeros(2, 2)).tolist() == [0.0, 0.0]
