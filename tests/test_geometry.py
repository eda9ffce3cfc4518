"""Legal budgets and validation messages (spec §1, §4)."""

import pytest

from quadformer.tokenize import QuadGeometry, legal_budgets, nearest_legal_budgets

# (S, p_min, p_max, N0, Nmax, {wanted: legal neighbours}) from the spec's table.
TABLE = [
    (224, 16, 32, 49, 196, {64: [64], 100: [100], 144: [142, 145], 196: [196]}),
    (256, 16, 64, 16, 256, {28: [28], 64: [64], 100: [100], 144: [142, 145], 196: [196], 256: [256]}),
    (256, 16, 32, 64, 256, {64: [64], 100: [100], 144: [142, 145], 196: [196], 256: [256]}),
    (384, 16, 64, 36, 576, {64: [63, 66], 100: [99, 102], 144: [144], 196: [195, 198], 256: [255, 258]}),
    (384, 16, 128, 9, 576, {28: [27, 30], 64: [63, 66], 100: [99, 102], 144: [144], 196: [195, 198]}),
    (32, 4, 16, 4, 64, {28: [28], 64: [64]}),
    (32, 2, 8, 16, 256, {28: [28], 64: [64], 100: [100], 144: [142, 145], 196: [196], 256: [256]}),
]


@pytest.mark.parametrize("s,pmin,pmax,n0,nmax,near", TABLE)
def test_spec_table(s, pmin, pmax, n0, nmax, near):
    budgets = legal_budgets(s, s, pmin, pmax)
    assert budgets[0] == n0 and budgets[-1] == nmax
    assert all(b - a == 3 for a, b in zip(budgets, budgets[1:]))
    for want, legal in near.items():
        assert nearest_legal_budgets(want, s, s, pmin, pmax) == legal
        for n in legal:
            QuadGeometry(s, s, pmin, pmax, n)


def test_error_message_names_nearest_budgets():
    with pytest.raises(ValueError) as e:
        QuadGeometry(384, 384, 16, 64, 100)
    assert str(e.value) == "N=100 impossible for 384x384, patches 16..64 (36+3k, max 576); nearest: 99, 102"


def test_out_of_range_names_bound():
    with pytest.raises(ValueError, match="the maximum is 256"):
        QuadGeometry(256, 256, 16, 64, 300)
    with pytest.raises(ValueError, match="the minimum is 16"):
        QuadGeometry(256, 256, 16, 64, 10)


def test_invalid_geometry_messages():
    with pytest.raises(ValueError, match="224x224 is not a multiple of p_max=64"):
        QuadGeometry(224, 224, 16, 64, 49)
    with pytest.raises(ValueError, match="power of two"):
        QuadGeometry(96, 96, 16, 48, 4)
    with pytest.raises(ValueError, match="p_min=0"):
        QuadGeometry(96, 96, 0, 32, 9)


def test_non_square_and_l1():
    g = QuadGeometry(96, 160, 16, 32, 15)
    assert (g.n0, g.nmax, g.num_scales) == (15, 60, 2)
    assert g.grid(1) == (3, 5) and g.grid(0) == (6, 10)
    u = QuadGeometry(64, 64, 16, 16, 16)
    assert u.num_scales == 1 and u.legal_budgets() == [16]
