"""Rendering: counts are conserved, Gaussians sit where they should with their own sigma."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import tifffile

from denseloc.analysis.render import render, render_colored, render_extent, save_image
from denseloc.errors import DenselocError, DenselocWarning


@pytest.fixture
def locs() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 5000
    return pd.DataFrame({
        "frame": rng.integers(0, 100, n),
        "x_nm": rng.uniform(0, 3000, n), "y_nm": rng.uniform(0, 2000, n),
        "z_nm": rng.uniform(-500, 500, n),
        "sigma_x_nm": rng.uniform(3, 40, n), "sigma_y_nm": rng.uniform(3, 40, n),
    })


def test_histogram_conserves_the_number_of_localizations(locs) -> None:
    image = render(locs, pixel_size_nm=10.0)
    assert image.shape == (200, 300)
    assert image.sum() == len(locs)
    # a sub-extent counts exactly the localizations inside it
    inside = locs["x_nm"].between(1000, 2000, inclusive="left") & locs["y_nm"].lt(1000)
    part = render(locs, pixel_size_nm=25.0, extent_nm=(1000.0, 2000.0, 0.0, 1000.0))
    assert part.shape == (40, 40) and part.sum() == inside.sum()


def test_gaussian_mode_conserves_counts_and_draws_each_sigma(locs) -> None:
    away = locs[locs["x_nm"].between(300, 2700) & locs["y_nm"].between(300, 1700)]
    image = render(away, pixel_size_nm=10.0, mode="gaussian",
                   extent_nm=(0.0, 3000.0, 0.0, 2000.0))
    assert image.sum() == pytest.approx(len(away), rel=1e-9)
    one = pd.DataFrame({"frame": [0], "x_nm": [503.7], "y_nm": [251.2], "sigma_x_nm": [30.0],
                        "sigma_y_nm": [12.0]})
    image = render(one, pixel_size_nm=2.0, mode="gaussian", extent_nm=(0.0, 1000.0, 0.0, 500.0))
    yy, xx = np.indices(image.shape)
    x_c = ((xx + 0.5) * 2.0 * image).sum() / image.sum()
    y_c = ((yy + 0.5) * 2.0 * image).sum() / image.sum()
    assert (x_c, y_c) == (pytest.approx(503.7, abs=0.01), pytest.approx(251.2, abs=0.01))
    var_x = (((xx + 0.5) * 2.0 - x_c) ** 2 * image).sum() / image.sum()
    var_y = (((yy + 0.5) * 2.0 - y_c) ** 2 * image).sum() / image.sum()
    # pixel integration adds pixel^2 / 12 to the variance
    assert var_x == pytest.approx(30.0**2 + 4 / 12, rel=0.01)
    assert var_y == pytest.approx(12.0**2 + 4 / 12, rel=0.01)


def test_pixels_are_half_open_at_the_extents_right_edge() -> None:
    # x = 100 nm belongs to the pixel starting there, outside an extent ending at 100 nm.
    table = pd.DataFrame({"frame": [0, 0, 0], "x_nm": [0.0, 99.9, 100.0],
                          "y_nm": [5.0, 5.0, 5.0]})
    image = render(table, pixel_size_nm=10.0, extent_nm=(0.0, 100.0, 0.0, 10.0))
    assert image.shape == (1, 10) and image[0, 0] == 1 and image[0, 9] == 1 and image.sum() == 2


def test_an_extent_of_a_partial_pixel_is_widened_not_cut(monkeypatch) -> None:
    table = pd.DataFrame({"frame": [0, 0], "x_nm": [5.0, 22.0], "y_nm": [5.0, 5.0],
                          "sigma_x_nm": [3.0, 3.0], "sigma_y_nm": [3.0, 3.0]})
    image = render(table, pixel_size_nm=10.0, extent_nm=(0.0, 25.0, 0.0, 10.0))
    assert image.shape == (1, 3) and image[0, 2] == 1  # 22 nm: in [20, 30), kept
    # Gaussian splats drawn in many small blocks add up to the same image.
    render_module = sys.modules["denseloc.analysis.render"]  # the package exports the function
    many = pd.DataFrame({"frame": 0, "x_nm": np.linspace(100, 900, 50),
                         "y_nm": np.linspace(800, 150, 50), "sigma_x_nm": 20.0,
                         "sigma_y_nm": 15.0})
    whole = render(many, pixel_size_nm=10.0, mode="gaussian", extent_nm=(0, 1000, 0, 1000))
    monkeypatch.setattr(render_module, "_SPLAT_ELEMENTS", 1000)  # one localization per block
    blocks = render(many, pixel_size_nm=10.0, mode="gaussian", extent_nm=(0, 1000, 0, 1000))
    np.testing.assert_allclose(blocks, whole, rtol=1e-12, atol=1e-15)
    assert whole.sum() == pytest.approx(50, rel=1e-9)


def test_sigmas_wider_than_the_drawing_window_are_warned_of() -> None:
    table = pd.DataFrame({"frame": [0, 0], "x_nm": [500.0, 500.0], "y_nm": [500.0, 500.0],
                          "sigma_x_nm": [20.0, 200.0], "sigma_y_nm": [20.0, 20.0]})
    with pytest.warns(DenselocWarning, match=r"1 localizations have sigmas above 25 render "
                      r"pixels \(50 nm\)"):
        render(table, pixel_size_nm=2.0, mode="gaussian", extent_nm=(0.0, 1000.0, 0.0, 1000.0))
    render(table, pixel_size_nm=10.0, mode="gaussian")  # 20 px: drawn whole, no warning


def test_gaussian_mode_needs_sigmas() -> None:
    table = pd.DataFrame({"frame": [0], "x_nm": [5.0], "y_nm": [5.0]})
    with pytest.raises(DenselocError, match="--mode histogram"):
        render(table, mode="gaussian")
    with pytest.raises(DenselocError, match="unknown render mode"):
        render(table, mode="dots")  # type: ignore[arg-type]


def test_color_by_z_hue_and_empty_pixels_black() -> None:
    from matplotlib import colormaps

    table = pd.DataFrame({"frame": [0] * 4, "x_nm": [5.0, 5.0, 25.0, 25.0],
                          "y_nm": [5.0] * 4, "z_nm": [-400.0, -400.0, 400.0, 400.0]})
    rgb = render_colored(table, by="z_nm", value_range=(-400.0, 400.0), pixel_size_nm=10.0,
                         extent_nm=(0.0, 40.0, 0.0, 10.0))
    assert rgb.shape == (1, 4, 3)
    turbo = colormaps["turbo"]
    np.testing.assert_allclose(rgb[0, 0], turbo(0.0)[:3])
    np.testing.assert_allclose(rgb[0, 2], turbo(1.0)[:3])
    assert (rgb[0, [1, 3]] == 0).all()


def test_save_png_and_calibrated_tiff(locs, tmp_path) -> None:
    from PIL import Image

    image = render(locs, pixel_size_nm=20.0)
    tif = save_image(image, tmp_path / "r.tif", pixel_size_nm=20.0)
    with tifffile.TiffFile(tif) as f:
        np.testing.assert_array_equal(f.asarray(), image.astype(np.float32))
        assert f.imagej_metadata["unit"] == "um"
        x_res = f.pages[0].tags["XResolution"].value
        assert x_res[0] / x_res[1] == pytest.approx(50.0)  # 50 px per um at 20 nm
    png = save_image(render_colored(locs, pixel_size_nm=20.0), tmp_path / "c.png",
                     pixel_size_nm=20.0)
    assert np.asarray(Image.open(png)).shape == (100, 150, 3)
    with pytest.raises(DenselocError, match=r"\.png, \.tif"):
        save_image(image, tmp_path / "r.jpg", pixel_size_nm=20.0)
    assert not list(tmp_path.glob("*.tmp*"))


def test_extent_starts_at_the_camera_origin(locs) -> None:
    assert render_extent(locs, 10.0) == (0.0, 3000.0, 0.0, 2000.0)
    with pytest.raises(DenselocError, match="empty"):
        render_extent(locs.iloc[:0], 10.0)
