"""The Gaussian-mixture loss: correct optimum, finite gradients, count term."""

from __future__ import annotations

import math

import pytest
import torch

from denseloc.nn.loss import gmm_loss
from denseloc.nn.model import DecodeNet


def perfect_output(targets: torch.Tensor, mask: torch.Tensor, size: int, sigma: float = 0.05):
    """Output maps that put p = 1 - eps exactly at each true emitter."""
    batch = targets.shape[0]
    out = torch.zeros((batch, 10, size, size), dtype=torch.float64)
    out[:, 0] = -12.0  # p ~ 6e-6 elsewhere
    out[:, 5:9] = sigma
    for b in range(batch):
        for k in torch.nonzero(mask[b]).flatten():
            ph, x, y, z = targets[b, k]
            row, col = round(float(y)), round(float(x))
            out[b, 0, row, col] = 12.0
            out[b, 1, row, col] = ph
            out[b, 2, row, col] = x - col
            out[b, 3, row, col] = y - row
            out[b, 4, row, col] = z
    return out


def example_targets():
    targets = torch.tensor(
        [[[0.3, 4.2, 5.4, 0.1], [0.5, 12.0, 3.3, -0.4], [0.0, 0.0, 0.0, 0.0]],
         [[0.2, 8.7, 9.1, 0.5], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]],
        dtype=torch.float64,
    )
    mask = torch.tensor([[True, True, False], [True, False, False]])
    return targets, mask


def test_true_configuration_beats_perturbed_ones() -> None:
    targets, mask = example_targets()
    best = gmm_loss(perfect_output(targets, mask, 16), targets, mask).total.item()
    for channel, delta in [(1, 0.1), (2, 0.2), (3, -0.2), (4, 0.1)]:
        out = perfect_output(targets, mask, 16)
        out[:, channel] += delta
        assert gmm_loss(out, targets, mask).total.item() > best + 1.0, channel
    # A missed emitter or an extra detection raises the count and mixture terms.
    out = perfect_output(targets, mask, 16)
    out[0, 0, 3, 12] = -12.0
    assert gmm_loss(out, targets, mask).total.item() > best + 1.0
    out = perfect_output(targets, mask, 16)
    out[1, 0, 1, 1] = 12.0
    assert gmm_loss(out, targets, mask).total.item() > best + 1.0


def test_wider_sigma_is_worse_when_the_mean_is_exact_and_better_when_wrong() -> None:
    targets, mask = example_targets()
    sharp = gmm_loss(perfect_output(targets, mask, 16, sigma=0.05), targets, mask).total
    blurry = gmm_loss(perfect_output(targets, mask, 16, sigma=0.5), targets, mask).total
    assert sharp < blurry
    off = perfect_output(targets, mask, 16, sigma=0.05)
    off[:, 2] += 0.3
    off_wide = perfect_output(targets, mask, 16, sigma=0.3)
    off_wide[:, 2] += 0.3
    assert gmm_loss(off_wide, targets, mask).total < gmm_loss(off, targets, mask).total


def test_count_term_is_a_normal_nll() -> None:
    out = torch.full((1, 10, 8, 8), 0.5, dtype=torch.float64)
    p = 0.1
    out[:, 0] = math.log(p / (1 - p))
    targets = torch.zeros((1, 4, 4), dtype=torch.float64)
    for m in range(4):
        mask = torch.zeros((1, 4), dtype=torch.bool)
        mask[0, :m] = True
        count = gmm_loss(out, targets, mask).count.item()
        mean, var = 64 * p, 64 * p * (1 - p)
        expected = 0.5 * math.log(2 * math.pi * var) + (m - mean) ** 2 / (2 * var)
        assert count == pytest.approx(expected, rel=1e-9)
        # DECODE's weighting: times the number of emitters, at least 1.
        weighted = gmm_loss(out, targets, mask, count_by_emitters=True)
        assert weighted.count.item() == pytest.approx(max(m, 1) * expected, rel=1e-9)
        assert weighted.localization.item() == gmm_loss(out, targets, mask).localization.item()


def test_background_term_is_the_mean_squared_error_of_channel_9_weighted() -> None:
    targets, mask = example_targets()
    out = perfect_output(targets, mask, 16)
    gen = torch.Generator().manual_seed(0)
    out[:, 9] = torch.rand(2, 16, 16, generator=gen, dtype=torch.float64)
    bg = torch.rand(2, 16, 16, generator=gen, dtype=torch.float64)
    parts = gmm_loss(out, targets, mask, bg)
    expected = ((out[:, 9] - bg) ** 2).mean((1, 2))
    torch.testing.assert_close(parts.background, expected, rtol=1e-12, atol=0)
    without = gmm_loss(out, targets, mask).total
    for weight in (1.0, 3.0):
        total = gmm_loss(out, targets, mask, bg, bg_weight=weight).total
        assert total.item() == pytest.approx(without.item() + weight * expected.mean().item(),
                                             rel=1e-12)


def test_gradient_is_finite_at_initialisation() -> None:
    torch.manual_seed(0)
    net = DecodeNet(filters=4, depth=2, context_frames=3)
    x = torch.randn(2, 3, 20, 20)
    targets, mask = example_targets()
    parts = gmm_loss(net(x), targets.float(), mask, torch.rand(2, 20, 20))
    parts.total.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.norm()) for g in grads) > 0


def test_detection_bce_rewards_p_on_the_target_pixel() -> None:
    from denseloc.nn.loss import detection_bce

    targets = torch.tensor([[[0.5, 3.2, 4.6, 0.0]]])
    mask = torch.tensor([[True]])
    out = torch.full((1, 10, 8, 8), -10.0)
    out[0, 0, 5, 3] = 10.0  # row round(4.6) = 5, column round(3.2) = 3
    assert detection_bce(out, targets, mask).item() < 0.01
    out[0, 0, 5, 3] = -10.0
    assert detection_bce(out, targets, mask).item() == pytest.approx(10.0, abs=0.01)


@pytest.mark.parametrize("is_3d", [True, False])
def test_mixture_term_is_the_mixture_nll_over_the_psf_parameters(is_3d: bool) -> None:
    """Against torch.distributions, pixel by pixel; a 2D PSF's mixture ignores z entirely."""
    gen = torch.Generator().manual_seed(1)
    targets, mask = example_targets()
    out = torch.randn((2, 10, 6, 7), generator=gen, dtype=torch.float64)
    out[:, 5:9] = torch.rand((2, 4, 6, 7), generator=gen, dtype=torch.float64) + 0.2
    out.requires_grad_(True)
    loss = gmm_loss(out, targets, mask, is_3d=is_3d).localization

    dims = 4 if is_3d else 3
    rows, cols = torch.meshgrid(torch.arange(6.0), torch.arange(7.0), indexing="ij")
    for b in range(2):
        o = out[b].detach().flatten(1)
        mu = torch.stack([o[1], cols.flatten() + o[2], rows.flatten() + o[3], o[4]])[:dims]
        sd = o[[8, 5, 6, 7]][:dims]
        mixture = torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(probs=torch.sigmoid(o[0])),
            torch.distributions.Independent(torch.distributions.Normal(mu.T, sd.T), 1),
        )
        expected = -mixture.log_prob(targets[b, mask[b], :dims]).sum()
        assert loss[b].item() == pytest.approx(expected.item(), rel=1e-9)

    loss.sum().backward()
    z_grad = out.grad[:, [4, 7]]
    assert (z_grad.abs().sum() > 0) == is_3d
