"""Quantizer math and time groups (pure calibration/, no DiT)."""
import pytest
import torch

from calibration.forms import FORMS, quantizer
from calibration.quantizers import GELU_MIN, fake_quant, initial_scale, qrange
from calibration.search import SearchSpace, fisher_or_plain, search_activation, weighted_error
from calibration.time_groups import TimeGroups


@pytest.mark.parametrize("bits", [4, 5, 6, 7, 8])
def test_codes_stay_in_the_signed_range(bits):
    lo, hi = qrange(bits)
    x = torch.linspace(-10, 10, 1001)
    s = torch.tensor(0.01)
    codes = fake_quant(x, s, bits) / s
    assert codes.min().round() == lo and codes.max().round() == hi
    torch.testing.assert_close(codes, codes.round())
    assert fake_quant(torch.zeros(3), s, bits).eq(0).all()


def test_per_channel_weights_use_axis_0():
    w = torch.tensor([[1.0, -2.0], [10.0, 20.0]])
    s = torch.tensor([2.0 / 127, 20.0 / 127])
    q = fake_quant(w, s, 8, axis=0)
    # Each row's absmax lands exactly on code ±127 of its own scale; the rest within half a step.
    assert q[0, 1] == -2.0 and q[1, 1] == pytest.approx(20.0)
    assert (q - w).abs().max(dim=1).values.le(s / 2 + 1e-7).all()


def test_rounding_is_half_to_even_on_x_over_s():
    s = torch.tensor(1.0)
    assert fake_quant(torch.tensor([0.5, 1.5, 2.5, -0.5]), s, 8).tolist() == [0.0, 2.0, 2.0, -0.0]


def test_softmax_mrq_regions_are_exclusive_and_zero_stays_zero():
    r = torch.tensor(2.0**-5)
    x = torch.tensor([0.0, 0.001, r.item() * 0.99, r.item(), 0.5, 1.0])
    q = quantizer("softmax", 8)(x, r)
    assert q[0] == 0  # the public code's sum of clamps would give ~r here
    t = FORMS["softmax"].tensors(r.reshape(1), 8)
    low, high = t["scale_low"], t["scale_high"]
    assert torch.isclose(high, torch.tensor(1 / 127)) and torch.isclose(low / high, r)
    # Small values get the fine step, large ones the coarse step.
    assert abs(q[1] - 0.001) <= low / 2 and abs(q[4] - 0.5) <= high / 2
    assert q[5] == 1.0


@pytest.mark.parametrize("bits", [6, 8])
def test_saturating_softmax_form_keeps_the_low_region_and_refines_the_high_one(bits):
    r = torch.tensor(2.0**-4)
    x = torch.cat([torch.linspace(0, 1, 2001), torch.rand(5000) ** 6])
    paper, saturate = quantizer("softmax", bits)(x, r), quantizer("softmax-saturate", bits)(x, r)
    low = x < r
    # Below r the two forms are the same quantizer; at and above r the saturating form's step
    # (1 - r)/qmax is finer than the paper's 1/qmax, and r itself is exact.
    assert torch.equal(paper[low], saturate[low])
    qmax = qrange(bits)[1]
    assert (saturate[~low] - x[~low]).abs().max() <= (1 - r) / qmax / 2 + 1e-6
    assert (saturate[~low] - x[~low]).abs().max() < (paper[~low] - x[~low]).abs().max()
    assert saturate[x == r.item()].eq(r).all() and saturate[x == 0].eq(0).all()


def test_gelu_mrq_negative_region_covers_the_gelu_minimum():
    x = torch.tensor([GELU_MIN, -0.05, 0.0, 0.3, 2.0])
    q = quantizer("gelu", 8)(x, torch.tensor(2.0 / 127))
    assert q[2] == 0
    torch.testing.assert_close(q[:2], x[:2], atol=0.17 / 256, rtol=0)
    torch.testing.assert_close(q[3:], x[3:], atol=1 / 127, rtol=0)


@pytest.mark.parametrize("bits", [6, 8])
def test_shifted_gelu_form_spans_the_gelu_range_with_every_code(bits):
    step = torch.tensor(2.0 / qrange(bits)[1])  # the positive region's step: hi = 2.0
    t = {k: v.item() for k, v in FORMS["gelu-shift"].tensors(step.reshape(1), bits).items()}
    x = torch.linspace(GELU_MIN, 2.0, 4001)
    q = quantizer("gelu-shift", bits)(x, step)
    hi = qrange(bits)[1]
    codes = (q - t["offset"]) / t["scale"]
    torch.testing.assert_close(codes, codes.round(), atol=1e-3, rtol=0)
    # [GELU_MIN, 2] lands on the symmetric codes [-qmax, qmax]: one GEMM, about half the step.
    assert codes.round().min() == -hi and codes.round().max() == hi
    assert (q - x).abs().max() <= t["scale"] / 2 + 1e-6
    assert t["scale"] < step.item() * 0.6


def test_initial_scale_is_positive_even_for_zero_input():
    assert initial_scale(0.0, 8) > 0
    assert initial_scale(torch.tensor(1.0), 8) == pytest.approx(1 / 127.5)


def test_time_groups_cover_the_training_axis():
    groups = TimeGroups.uniform(10)
    assert groups.edges == tuple(range(0, 1001, 100))
    assert groups.group_of(0) == 0 and groups.group_of(99) == 0 and groups.group_of(100) == 1
    assert groups.group_of(999) == 9
    assert groups.group_of(torch.tensor([250, 260])) == 2
    with pytest.raises(ValueError, match="span several"):
        groups.group_of(torch.tensor([99, 100]))
    with pytest.raises(ValueError, match="outside"):
        groups.group_of(1000)
    assert TimeGroups.uniform(3).edges == (0, 333, 667, 1000)
    with pytest.raises(ValueError):
        TimeGroups((0, 5, 5, 10))


def test_fisher_weights_change_the_chosen_scale():
    # Two output rows: a row of small values and one with a large outlier. Unweighted, the
    # outlier dominates and the scale stays large; weighting the small row by its gradient
    # makes the search clip the outlier and resolve the small values.
    torch.manual_seed(0)
    x = torch.cat([torch.randn(1, 64) * 0.05, torch.tensor([[8.0] + [0.0] * 63])])
    w = torch.eye(64)
    target = x @ w.T
    space = SearchSpace()
    absmax = x.abs().max()
    plain = search_activation(x, "uniform", 4, absmax, lambda xh: xh @ w.T, target, None, space)
    fisher = torch.zeros_like(target)
    fisher[0] = 1.0
    hessian = search_activation(x, "uniform", 4, absmax, lambda xh: xh @ w.T, target, fisher, space)
    assert hessian < plain / 4


def test_zero_fisher_weights_fall_back_to_the_plain_error():
    o, o_hat = torch.ones(4, 3), torch.zeros(4, 3)
    weight = torch.zeros(4, 3)
    weight[:, 0] = 2.0
    per_channel = weighted_error(o, o_hat, fisher_or_plain(weight, channel_dim=-1), channel_dim=-1)
    assert per_channel.tolist() == [8.0, 4.0, 4.0]
    assert fisher_or_plain(torch.zeros(4, 3)) is None
    # A search whose loss never reaches the output does not collapse to the smallest candidate.
    x = torch.linspace(-1, 1, 64).view(1, 64)
    best = search_activation(x, "uniform", 8, x.abs().max(), lambda xh: xh, x, torch.zeros(1, 64), SearchSpace())
    assert best > 0.5 / 127
