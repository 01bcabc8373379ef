"""Output maps -> localizations: spatial integration and the mixture readout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from denseloc.localize.postprocess import maps_to_table, spatial_integration
from denseloc.nn.model import Scaling

SCALING = Scaling(input_offset=0.0, input_scale=1.0, photons=1000.0, z_nm=500.0, bg_photons=10.0)
PX = 100.0
READ_3D = {"pixel_size_nm": PX, "is_3d": True}  # maps_to_table for a 3D model


def _maps(size: int = 9) -> torch.Tensor:
    """Output maps (1, 10, size, size) with p ~ 0 everywhere and unit-ish sigmas."""
    out = torch.zeros(1, 10, size, size, dtype=torch.float64)
    out[:, 0] = -30.0  # p = sigmoid(-30) ~ 1e-13
    out[:, 5:9] = 0.1
    return out


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


@pytest.mark.parametrize("size", [9, 64, 256])
def test_equal_neighbours_give_one_maximum(size) -> None:
    # Saturated p on two adjacent pixels (one emitter between them) must count once.
    p = torch.zeros(1, size, size)
    p[0, 4, 4:6] = 1.0
    p[0, 7, 2] = p[0, 8, 3] = 0.7  # diagonal neighbours
    is_max, _ = spatial_integration(p)
    assert torch.nonzero(is_max[0]).tolist() == [[4, 4], [7, 2]]


def test_single_pixel_mixture_equals_the_pixel() -> None:
    out = _maps()
    out[0, :9, 4, 4] = torch.tensor([_logit(0.9), 0.5, 0.2, -0.3, 0.4, 0.05, 0.07, 0.02, 0.03],
                                    dtype=torch.float64)
    for readout in ("mixture", "max"):
        row = maps_to_table(out, SCALING, **READ_3D, threshold=0.5, readout=readout)
        assert len(row) == 1
        r = row.iloc[0]
        assert r.x_nm == pytest.approx((4 + 0.2 + 0.5) * PX)
        assert r.y_nm == pytest.approx((4 - 0.3 + 0.5) * PX)
        assert r.z_nm == pytest.approx(0.4 * 500.0)
        assert r.photons == pytest.approx(500.0)
        assert r.sigma_x_nm == pytest.approx(0.05 * PX, rel=1e-6)
        assert r.sigma_y_nm == pytest.approx(0.07 * PX, rel=1e-6)
        assert r.sigma_z_nm == pytest.approx(0.02 * 500.0, rel=1e-6)
        assert r.sigma_photons == pytest.approx(30.0, rel=1e-6)


def test_mixture_readout_is_the_mixture_mean_and_total_variance() -> None:
    """Two neighbouring pixels share an emitter: weights 0.6 / 0.3, different offsets."""
    out = _maps()
    out[0, 0, 4, 4], out[0, 0, 4, 5] = _logit(0.6), _logit(0.3)
    out[0, 2, 4, 4], out[0, 2, 4, 5] = 0.3, -0.5  # x: 4.3 and 4.5 px
    out[0, 4, 4, 4], out[0, 4, 4, 5] = 0.2, 0.4  # z
    out[0, 5, 4, 4], out[0, 5, 4, 5] = 0.1, 0.2  # sigma_x
    out[0, 7, 4, 4], out[0, 7, 4, 5] = 0.05, 0.05  # sigma_z
    w = np.array([0.6, 0.3]) / 0.9
    mu_x, s_x = np.array([4.3, 4.5]), np.array([0.1, 0.2])
    mu_z, s_z = np.array([0.2, 0.4]), np.array([0.05, 0.05])

    table = maps_to_table(out, SCALING, **READ_3D, threshold=0.5)
    assert len(table) == 1  # one local maximum; integrated p = 0.9
    r = table.iloc[0]
    mean_x = w @ mu_x
    assert r.x_nm == pytest.approx((mean_x + 0.5) * PX, rel=1e-6)
    sd_x = np.sqrt(w @ (s_x**2 + (mu_x - mean_x) ** 2))
    assert r.sigma_x_nm == pytest.approx(sd_x * PX, rel=1e-6)
    mean_z = w @ mu_z
    assert r.z_nm == pytest.approx(mean_z * 500.0, rel=1e-6)
    assert r.sigma_z_nm == pytest.approx(np.sqrt(w @ (s_z**2 + (mu_z - mean_z) ** 2)) * 500.0,
                                         rel=1e-6)
    # The maximum pixel alone understates the uncertainty.
    top = maps_to_table(out, SCALING, **READ_3D, threshold=0.5, readout="max").iloc[0]
    assert top.x_nm == pytest.approx(4.8 * PX) and top.sigma_x_nm == pytest.approx(0.1 * PX)
    assert r.sigma_x_nm > top.sigma_x_nm


def test_vertical_neighbours_mix_y_and_photons_and_report_the_integrated_p() -> None:
    out = _maps()
    out[0, 0, 4, 4], out[0, 0, 5, 4] = _logit(0.6), _logit(0.3)  # the second one row below
    out[0, 1, 4, 4], out[0, 1, 5, 4] = 0.5, 0.7  # photons 500 and 700
    out[0, 3, 4, 4], out[0, 3, 5, 4] = 0.3, -0.5  # y: 4.3 and 4.5 px
    out[0, 6, 4, 4], out[0, 6, 5, 4] = 0.1, 0.2  # sigma_y
    out[0, 8, 4, 4], out[0, 8, 5, 4] = 0.03, 0.05  # sigma of the photons: 30 and 50
    w = np.array([0.6, 0.3]) / 0.9
    table = maps_to_table(out, SCALING, **READ_3D, threshold=0.5)
    assert len(table) == 1
    r = table.iloc[0]
    for value, sd, mu, s, unit in [(r.y_nm - 0.5 * PX, r.sigma_y_nm, [4.3, 4.5], [0.1, 0.2], PX),
                                   (r.photons, r.sigma_photons, [0.5, 0.7], [0.03, 0.05],
                                    1000.0)]:
        mu, s = np.array(mu), np.array(s)
        assert value == pytest.approx(w @ mu * unit, rel=1e-6)
        assert sd == pytest.approx(np.sqrt(w @ (s**2 + (mu - w @ mu) ** 2)) * unit, rel=1e-6)
    assert r.x_nm == pytest.approx(4.5 * PX, rel=1e-6)  # no x offsets: the pixel centre
    assert r.p == pytest.approx(0.9, rel=1e-6)


def test_the_threshold_applies_to_the_integrated_p() -> None:
    out = _maps()
    out[0, 0, 2, 2], out[0, 0, 2, 3] = _logit(0.3), _logit(0.3)  # one emitter split in two
    out[0, 0, 6, 6] = _logit(0.45)  # alone, below the threshold
    table = maps_to_table(out, SCALING, **READ_3D, threshold=0.5)
    assert len(table) == 1
    assert table.iloc[0].p == pytest.approx(0.6, rel=1e-6)
    assert table.iloc[0].y_nm == pytest.approx(2.5 * PX)


@pytest.mark.parametrize("corner", [(0, 0), (8, 8)])
def test_detection_at_the_frame_corner_uses_only_pixels_inside(corner) -> None:
    """Clamping or wrapping out-of-frame neighbours would change the weights.

    Clamped, the detection's pixel would count four times and its neighbour twice; wrapped
    (negative indices), the dim pixel in the opposite corner would join the mixture.
    """
    row, col = corner
    side = 1 if col == 0 else -1  # the neighbour towards the inside
    out = _maps()
    out[0, 0, row, col], out[0, 0, row, col + side] = _logit(0.6), _logit(0.3)
    out[0, 2, row, col], out[0, 2, row, col + side] = -0.2, 0.1
    out[0, 0, 8 - row, 8 - col], out[0, 2, 8 - row, 8 - col] = _logit(0.1), 0.4  # opposite
    table = maps_to_table(out, SCALING, **READ_3D, threshold=0.5)
    assert len(table) == 1  # the dim corner is below the threshold
    x_px = 2 / 3 * (col - 0.2) + 1 / 3 * (col + side + 0.1)
    assert table.x_nm[0] == pytest.approx((x_px + 0.5) * PX, rel=1e-6)


def test_each_frame_reads_its_own_maps() -> None:
    out = _maps().repeat(2, 1, 1, 1)
    out[0, 0, 2, 2], out[0, 2, 2, 2] = _logit(0.9), 0.3
    out[1, 0, 6, 5], out[1, 2, 6, 5], out[1, 5, 6, 5] = _logit(0.8), -0.1, 0.2
    out[1, 0, 6, 6] = _logit(0.05)  # a faint neighbour in frame 1 only
    table = maps_to_table(out, SCALING, **READ_3D, threshold=0.5, frames=[10, 11])
    assert table.frame.tolist() == [10, 11]
    assert table.x_nm[0] == pytest.approx(2.8 * PX) and table.sigma_x_nm[0] == pytest.approx(10.0)
    w = np.array([0.8, 0.05]) / 0.85
    mu, sd = np.array([4.9, 6.0]), np.array([0.2, 0.1])
    mean = w @ mu
    assert table.x_nm[1] == pytest.approx((mean + 0.5) * PX, rel=1e-6)
    assert table.sigma_x_nm[1] == pytest.approx(
        np.sqrt(w @ (sd**2 + (mu - mean) ** 2)) * PX, rel=1e-6)


@pytest.mark.parametrize("readout", ["mixture", "max"])
def test_sigma_scale_multiplies_each_axis_sigma_and_nothing_else(readout) -> None:
    out = _maps()
    out[0, 0, 4, 4], out[0, 0, 4, 5] = _logit(0.6), _logit(0.3)
    out[0, 1:9, 4, 5] = torch.tensor([0.7, -0.4, 0.2, -0.1, 0.2, 0.15, 0.08, 0.05],
                                     dtype=torch.float64)
    raw = maps_to_table(out, SCALING, **READ_3D, readout=readout)
    factors = {"photons": 1.5, "x": 0.6, "y": 2.0, "z": 0.8}
    scaled = maps_to_table(out, SCALING, **READ_3D, readout=readout,
                           sigma_scale=factors)
    for column, axis in (("sigma_photons", "photons"), ("sigma_x_nm", "x"),
                         ("sigma_y_nm", "y"), ("sigma_z_nm", "z")):
        np.testing.assert_allclose(scaled[column], raw[column] * factors[axis], rtol=1e-12)
    others = [c for c in raw.columns if not c.startswith("sigma_")]
    pd.testing.assert_frame_equal(scaled[others], raw[others])
    # Missing axes keep their sigma.
    partial = maps_to_table(out, SCALING, **READ_3D, readout=readout,
                            sigma_scale={"x": 0.6})
    pd.testing.assert_series_equal(partial["sigma_y_nm"], raw["sigma_y_nm"])


def test_a_2d_model_reports_z_0_without_a_sigma_and_the_rest_unchanged() -> None:
    # A 2D model's z maps are untrained (the loss ignores them): whatever they hold.
    out = _maps()
    out[0, 0, 4, 4], out[0, 0, 4, 5] = _logit(0.6), _logit(0.3)
    out[0, 1:9, 4, 5] = torch.tensor([0.7, -0.4, 0.2, -0.1, 0.2, 0.15, 0.08, 0.05],
                                     dtype=torch.float64)
    as_3d = maps_to_table(out, SCALING, **READ_3D)
    as_2d = maps_to_table(out, SCALING, pixel_size_nm=PX, is_3d=False)
    assert as_3d.z_nm.abs().min() > 0
    assert (as_2d.z_nm == 0).all() and as_2d.sigma_z_nm.isna().all()
    others = [c for c in as_3d.columns if c not in ("z_nm", "sigma_z_nm")]
    pd.testing.assert_frame_equal(as_2d[others], as_3d[others])


def test_unknown_readout_is_an_error() -> None:
    with pytest.raises(ValueError, match="readout"):
        maps_to_table(_maps(), SCALING, **READ_3D, readout="mean")


def test_filter_by_sigma_cuts_on_the_lateral_sigma() -> None:
    from denseloc.localize.postprocess import filter_by_sigma

    table = pd.DataFrame({"x_nm": [1.0, 2.0, 3.0, 4.0], "sigma_x_nm": [3.0, 6.0, 1.0, 20.0],
                          "sigma_y_nm": [4.0, 8.0, 1.0, 0.0]})  # lateral 5, 10, 1.41, 20
    assert filter_by_sigma(table, max_sigma_nm=10.0)["x_nm"].tolist() == [1.0, 2.0, 3.0]
    assert filter_by_sigma(table, max_sigma_nm=4.9)["x_nm"].tolist() == [3.0]
    assert filter_by_sigma(table, quantile=0.5)["x_nm"].tolist() == [1.0, 3.0]
    both = filter_by_sigma(table, max_sigma_nm=4.9, quantile=0.75)
    assert both["x_nm"].tolist() == [3.0]
