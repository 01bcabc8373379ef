"""Tests of denseloc.io.formats: round trips, the real third-party files, and errors.

The "positions land on the spots" tests check the pixel convention of each format against
the images the localizations belong to: at the converted positions the image must be
brighter than one pixel away, and the intensity-weighted centroid around them must agree to
a small fraction of a pixel, while the other convention (half a pixel off) must not.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

import denseloc
from denseloc.errors import DenselocError, DenselocWarning, InputFileError
from denseloc.io import formats
from denseloc.io.formats import FORMATS, read_table, writable_format, write_table
from denseloc.table import COLUMNS, TableError, empty, nm_to_px

WRITABLE = [name for name, spec in FORMATS.items() if spec.write is not None]
SUFFIX = {name: spec.suffixes[0] for name, spec in FORMATS.items()}
PIXEL_NM = 100.0

# Picasso stores positions, photons, bg and precisions as float32.
FLOAT32_FORMATS = {"picasso"}


def make_table(n: int = 50, seed: int = 0) -> pd.DataFrame:
    """A table with every schema column, distinct sigma_x/sigma_y and one extra column."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        {
            "frame": rng.integers(0, 20, n),
            "x_nm": rng.uniform(0, 6400, n),
            "y_nm": rng.uniform(0, 3200, n),
            "z_nm": rng.uniform(-500, 500, n),
            "photons": rng.uniform(100, 5000, n),
            "bg": rng.uniform(1, 50, n),
            "p": rng.uniform(0, 1, n),
            "sigma_x_nm": rng.uniform(5, 30, n),
            "sigma_y_nm": rng.uniform(5, 30, n),
            "sigma_z_nm": rng.uniform(10, 60, n),
            "sigma_photons": rng.uniform(10, 100, n),
            "id": rng.integers(0, 1000, n),
            "chi2": rng.uniform(0, 3, n),
        }
    )
    assert set(COLUMNS) < set(table.columns)
    table.attrs = {"pixel_size_nm": PIXEL_NM, "source": "make_table", "config": {"a": [1, 2]}}
    return table


def assert_same_columns(read: pd.DataFrame, written: pd.DataFrame, fmt: str) -> None:
    assert list(read.columns) == list(written.columns)
    float32 = fmt in FLOAT32_FORMATS
    rtol = 1e-6 if float32 else 1e-12
    atol = 1e-3 if float32 else 0.0  # nm; float32 px positions near 6400 nm
    for col in written.columns:
        a, b = read[col].to_numpy(), written[col].to_numpy()
        if np.issubdtype(b.dtype, np.integer):
            np.testing.assert_array_equal(a, b, err_msg=col)
        else:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=col)


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", WRITABLE)
def test_round_trip_every_column(tmp_path: Path, fmt: str) -> None:
    table = make_table()
    path = tmp_path / f"locs{SUFFIX[fmt]}"
    write_table(table, path, format=fmt)
    back = read_table(path)  # format detected from extension and content
    assert_same_columns(back, table, fmt)


@pytest.mark.parametrize("fmt", WRITABLE)
def test_round_trip_empty_table(tmp_path: Path, fmt: str) -> None:
    table = empty()
    path = tmp_path / f"empty{SUFFIX[fmt]}"
    write_table(table, path, format=fmt, pixel_size_nm=PIXEL_NM)
    back = read_table(path, format=fmt)
    assert len(back) == 0
    assert list(back.columns) == list(table.columns)
    assert (back.dtypes == table.dtypes).all()


@pytest.mark.parametrize("fmt", ["parquet", "csv", "thunderstorm"])
def test_round_trip_empty_table_keeps_columns(tmp_path: Path, fmt: str) -> None:
    table = make_table().iloc[:0]
    path = tmp_path / f"empty{SUFFIX[fmt]}"
    write_table(table, path, format=fmt)
    assert list(read_table(path, format=fmt).columns) == list(table.columns)


@pytest.mark.parametrize("config", [{"a": [1, 2], "b": {"c": 0.5}}, "model:\n  depth: 3\n"])
def test_parquet_stores_metadata(tmp_path: Path, config: object) -> None:
    table = make_table()
    table.attrs = {"pixel_size_nm": 117.0, "source": "sim run 3", "config": config}
    path = tmp_path / "t.parquet"
    write_table(table, path)
    back = read_table(path)
    assert back.attrs == {
        "pixel_size_nm": 117.0,
        "source": "sim run 3",
        "config": config,
        "software_version": denseloc.__version__,
    }


def test_parquet_rejects_unserializable_config_and_writes_nothing(tmp_path: Path) -> None:
    table = make_table()
    table.attrs["config"] = object()
    path = tmp_path / "t.parquet"
    with pytest.raises(DenselocError, match="JSON"):
        write_table(table, path)
    assert list(tmp_path.iterdir()) == []


def test_thunderstorm_file_style(tmp_path: Path) -> None:
    table = make_table(5)
    table["sigma_y_nm"] = table["sigma_x_nm"]
    table["z_nm"] = 0.0
    table["sigma_z_nm"] = np.nan  # as a 2D fit reports it
    path = tmp_path / "ts.csv"
    write_table(table, path, format="thunderstorm")
    header, first = path.read_text().splitlines()[:2]
    names = header.split(",")
    assert names[:4] == ['"id"', '"frame"', '"x [nm]"', '"y [nm]"']
    assert '"uncertainty_xy [nm]"' in names
    assert '"intensity [photon]"' in names and '"offset [photon]"' in names
    assert '"z [nm]"' not in names and '"uncertainty_z [nm]"' not in names  # 2D data
    assert '""' not in first  # no empty quoted fields
    assert int(first.split(",")[1]) == table["frame"].iloc[0] + 1  # 1-based in the file
    back = read_table(path)
    np.testing.assert_array_equal(back["frame"], table["frame"])
    np.testing.assert_allclose(back["sigma_y_nm"], table["sigma_x_nm"])


def test_thunderstorm_is_detected_but_plain_csv_is_the_default(tmp_path: Path) -> None:
    table = make_table(5)
    write_table(table, tmp_path / "plain.csv")
    write_table(table, tmp_path / "ts.csv", format="thunderstorm")
    assert (tmp_path / "plain.csv").read_text().startswith("frame,x_nm,y_nm")
    for name in ("plain.csv", "ts.csv"):
        np.testing.assert_array_equal(read_table(tmp_path / name)["frame"], table["frame"])


def test_picasso_file_layout(tmp_path: Path) -> None:
    table = make_table(4)
    table["x_nm"] = [50.0, 150.0, 1050.0, 3150.0]  # centres of columns 0, 1, 10, 31
    path = tmp_path / "movie_locs.hdf5"
    write_table(table, path, pixel_size_nm=PIXEL_NM)
    with h5py.File(path, "r") as f:
        locs = f["locs"][...]
    for field, dtype in [("frame", "u4"), ("x", "f4"), ("y", "f4"), ("lpx", "f4")]:
        assert locs.dtype[field] == np.dtype(dtype)
    assert {"photons", "sx", "sy", "bg", "lpy", "group"} <= set(locs.dtype.names)
    np.testing.assert_allclose(locs["x"], [0.0, 1.0, 10.0, 31.0])  # pixel centres at integers
    np.testing.assert_allclose(locs["lpx"], table["sigma_x_nm"] / PIXEL_NM, rtol=1e-6)
    (info,) = yaml.safe_load_all(path.with_suffix(".yaml").read_text())
    assert info["Pixelsize"] == PIXEL_NM
    assert info["Frames"] == table["frame"].max() + 1
    assert info["Width"] == 32 and info["Height"] >= 1
    assert info["Generated by"].startswith("denseloc")
    # A table that knows its movie (as denseloc localize makes them) gives the movie's size.
    table.attrs["movie_shape"] = [500, 64, 48]
    write_table(table, path, pixel_size_nm=PIXEL_NM)
    (info,) = yaml.safe_load_all(path.with_suffix(".yaml").read_text())
    assert (info["Frames"], info["Height"], info["Width"]) == (500, 64, 48)


def test_picasso_needs_a_pixel_size(tmp_path: Path) -> None:
    table = make_table(3)
    table.attrs = {}
    with pytest.raises(DenselocError, match="pixel_size_nm"):
        write_table(table, tmp_path / "a.hdf5")
    write_table(table, tmp_path / "a.hdf5", pixel_size_nm=PIXEL_NM)
    (tmp_path / "a.yaml").unlink()
    with pytest.raises(InputFileError, match=r"a\.hdf5.*pixel_size_nm"):
        read_table(tmp_path / "a.hdf5")
    assert read_table(tmp_path / "a.hdf5", pixel_size_nm=PIXEL_NM).attrs["pixel_size_nm"] == 100


def test_picasso_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.hdf5"
    write_table(make_table(3), path)
    before = path.read_bytes(), path.with_suffix(".yaml").read_bytes()

    def fail(*args: object, **kwargs: object) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr(formats.yaml, "safe_dump_all", fail)
    with pytest.raises(RuntimeError):
        write_table(make_table(7, seed=1), path)
    assert (path.read_bytes(), path.with_suffix(".yaml").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.hdf5", "a.yaml"]


def test_picasso_output_never_replaces_a_raw_movies_metadata(tmp_path: Path) -> None:
    # denseloc localize movie.raw --out movie.hdf5 would write movie.yaml: the movie's own.
    (tmp_path / "movie.raw").write_bytes(b"\0" * 8)
    sidecar = tmp_path / "movie.yaml"
    sidecar.write_text("Data Type: uint16\nFrames: 1\nHeight: 2\nWidth: 2\n")
    before = sidecar.read_bytes()
    with pytest.raises(DenselocError, match=r"movie_locs\.hdf5"):
        writable_format(tmp_path / "movie.hdf5")
    with pytest.raises(DenselocError, match=r"metadata of the movie movie\.raw"):
        write_table(make_table(3), tmp_path / "movie.hdf5")
    assert sidecar.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["movie.raw", "movie.yaml"]
    write_table(make_table(3), tmp_path / "movie_locs.hdf5")


def test_decode_file_layout(tmp_path: Path) -> None:
    table = make_table(3)
    path = tmp_path / "em.h5"
    write_table(table, path)
    with h5py.File(path, "r") as f:
        assert f["meta"].attrs["xy_unit"] == "nm"
        np.testing.assert_array_equal(f["meta"].attrs["px_size"], [PIXEL_NM, PIXEL_NM])
        assert "version" in f["decode"].attrs
        xyz = f["data/xyz"][()]
        assert xyz.shape == (3, 3)
        # DECODE: x is the image row, pixel centres at integer px, nm = px * px_size
        np.testing.assert_allclose(xyz[:, 0], table["y_nm"] - PIXEL_NM / 2)
        np.testing.assert_allclose(xyz[:, 1], table["x_nm"] - PIXEL_NM / 2)
        np.testing.assert_array_equal(f["data/frame_ix"][()], table["frame"])
        np.testing.assert_allclose(f["data/xyz_sig"][()][:, 1], table["sigma_x_nm"])
        np.testing.assert_allclose(f["data/prob"][()], table["p"])
        assert f["data/xyz_cr"].shape is None  # all NaN -> empty, as DECODE does
        assert set(f["data"]) >= {"phot", "phot_sig", "id", "bg", "bg_sig", "phot_cr"}
    assert json.loads(h5py.File(path, "r")["denseloc"].attrs["metadata"])["pixel_size_nm"] == 100


def test_decode_reads_pixel_units(tmp_path: Path) -> None:
    path = tmp_path / "px.h5"
    with h5py.File(path, "w") as f:
        f.create_group("meta").attrs.update({"xy_unit": "px", "px_size": [160.0, 160.0]})
        f.create_group("decode").attrs["version"] = "0.10.0"
        g = f.create_group("data")
        g["xyz"] = np.array([[2.0, 5.0, -100.0]])  # row 2, column 5
        g["xyz_sig"] = np.array([[0.1, 0.2, 30.0]])
        g["phot"] = [1000.0]
        g["frame_ix"] = np.array([4])
        g["id"] = np.array([-1])
        g["prob"] = [0.9]
        g["bg"] = [np.nan]
        g["xyz_cr"] = h5py.Empty("f")
    t = read_table(path)
    assert t.loc[0, "x_nm"] == pytest.approx(5.5 * 160) and t.loc[0, "y_nm"] == 2.5 * 160
    assert (t.loc[0, "sigma_x_nm"], t.loc[0, "sigma_y_nm"]) == pytest.approx((32.0, 16.0))
    assert t.loc[0, "z_nm"] == -100 and t.loc[0, "sigma_z_nm"] == 30
    assert "id" not in t.columns and "bg" not in t.columns  # DECODE's "none" values
    assert t.attrs["pixel_size_nm"] == 160


def test_a_pixel_size_that_contradicts_the_files_is_refused(shared_data: Path,
                                                            tmp_path: Path) -> None:
    # DECODE and Picasso positions depend on the pixel size: a different one given by hand
    # would shift (DECODE nm) or scale (px) every position without a word.
    path = tmp_path / "em.h5"
    write_table(make_table(3), path)  # meta/px_size 100
    assert read_table(path, pixel_size_nm=PIXEL_NM).attrs["pixel_size_nm"] == PIXEL_NM
    with pytest.raises(InputFileError, match=r"meta/px_size records 100 nm pixels, but 160 nm"):
        read_table(path, pixel_size_nm=160)
    # Picasso's sidecar records the camera's 160 nm and Localize's 130 nm: either may be
    # chosen (reading without one warns and takes 160), nothing else.
    locs = shared_data / "picasso_sim" / "testdata_locs.hdf5"
    assert read_table(locs, pixel_size_nm=130).attrs["pixel_size_nm"] == 130
    with pytest.raises(InputFileError, match=r"YAML records 160 or 130 nm pixels, but 100 nm"):
        read_table(locs, pixel_size_nm=100)
    # Without a recorded pixel size, or with one that is invalid, the one given is used.
    with h5py.File(path, "r+") as f:
        f["meta"].attrs["px_size"] = [100.0, 120.0]  # non-square: unreadable without a size
    with pytest.raises(InputFileError, match="non-square pixels"):
        read_table(path)
    assert read_table(path, pixel_size_nm=160).attrs["pixel_size_nm"] == 160
    with h5py.File(path, "r+") as f:
        del f["meta"].attrs["px_size"]
    assert read_table(path, pixel_size_nm=160).attrs["pixel_size_nm"] == 160


# ----------------------------------------------------------------------------- real files


def test_read_thunderstorm_ground_truth(shared_data: Path) -> None:
    t = read_table(shared_data / "thunderstorm_sim" / "ground_truth.csv")
    assert len(t) == 4956
    assert (t["frame"].min(), t["frame"].max()) == (0, 19)  # 1..20 in the file
    assert t.loc[0, "x_nm"] == pytest.approx(67.843) and t.loc[0, "id"] == 1
    assert t.loc[0, "photons"] == pytest.approx(2458.46515)
    assert t.loc[0, "bg"] == 50
    assert {"psf_sigma_nm", "bkgstd_photons"} <= set(t.columns)


def test_read_challenge_ground_truth(shared_data: Path) -> None:
    t = read_table(shared_data / "tubulins1_frame20" / "ground_truth.csv")
    assert len(t) == 49
    assert set(t["frame"]) == {19}  # frame 20, 1-based
    assert list(t.loc[0, ["id", "x_nm", "y_nm", "z_nm", "photons"]]) == pytest.approx(
        [1, 25713.33, 26788.90, 192.31, 1655.48]
    )


def test_read_picasso_locs(shared_data: Path) -> None:
    path = shared_data / "picasso_sim" / "testdata_locs.hdf5"
    # the sidecar holds the movie's Camera.Pixelsize 160 and Localize's default 130
    with pytest.warns(DenselocWarning, match="160"):
        t = read_table(path)
    assert t.attrs["pixel_size_nm"] == 160
    with h5py.File(path, "r") as f:
        locs = f["locs"][...]
    assert len(t) == len(locs) == 564
    np.testing.assert_allclose(t["x_nm"], (locs["x"] + 0.5) * 160.0, rtol=1e-6)
    np.testing.assert_allclose(t["sigma_y_nm"], locs["lpy"] * 160.0, rtol=1e-6)
    np.testing.assert_array_equal(t["frame"], locs["frame"])
    assert {"net_gradient", "likelihood", "iterations"} <= set(t.columns)
    explicit = read_table(path, pixel_size_nm=160)  # no warning when passed
    pd.testing.assert_frame_equal(explicit, t)


def test_picasso_pixel_size_from_movie_sidecar(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "picasso_sim"
    shutil.copy(src / "testdata_locs.hdf5", tmp_path / "testdata_locs.hdf5")
    shutil.copy(src / "testdata.yaml", tmp_path / "testdata.yaml")
    (tmp_path / "testdata_locs.yaml").write_text("Generated by: Picasso Localize\n")
    assert read_table(tmp_path / "testdata_locs.hdf5").attrs["pixel_size_nm"] == 160


def test_picasso_round_trip_of_real_locs(shared_data: Path, tmp_path: Path) -> None:
    t = read_table(shared_data / "picasso_sim" / "testdata_locs.hdf5", pixel_size_nm=160)
    write_table(t, tmp_path / "copy_locs.hdf5")
    assert_same_columns(read_table(tmp_path / "copy_locs.hdf5"), t, "picasso")


# ----------------------------------------------------------------------------- conventions


def spot_contrast(images: np.ndarray, t: pd.DataFrame, px: float, shift: tuple[int, int]) -> float:
    """Mean of (image at the localization's pixel + shift) - frame median, in ADU."""
    col = np.rint(nm_to_px(t["x_nm"].to_numpy(), px)).astype(int) + shift[0]
    row = np.rint(nm_to_px(t["y_nm"].to_numpy(), px)).astype(int) + shift[1]
    frame = t["frame"].to_numpy()
    inside = (col >= 0) & (col < images.shape[2]) & (row >= 0) & (row < images.shape[1])
    median = np.median(images.reshape(len(images), -1), axis=1)
    values = images[frame[inside], row[inside], col[inside]].astype(float)
    return float(np.mean(values - median[frame[inside]]))


def centroid_offset_px(
    images: np.ndarray, col: np.ndarray, row: np.ndarray, frame: np.ndarray
) -> np.ndarray:
    """Pooled intensity-weighted centroid minus position, in a 5x5 box, in px (x, y)."""
    median = np.median(images.reshape(len(images), -1), axis=1)
    num, den = np.zeros(2), 0.0
    dy, dx = np.mgrid[-2:3, -2:3]
    for c, r, f in zip(col, row, frame, strict=True):
        ci, ri = round(c), round(r)
        if not (2 <= ci < images.shape[2] - 2 and 2 <= ri < images.shape[1] - 2):
            continue
        box = images[f, ri - 2 : ri + 3, ci - 2 : ci + 3] - median[f]
        num += [(box * (ci + dx - c)).sum(), (box * (ri + dy - r)).sum()]
        den += box.sum()
    return num / den


def check_positions_on_spots(images: np.ndarray, t: pd.DataFrame, px: float) -> None:
    at_spot = spot_contrast(images, t, px, (0, 0))
    assert at_spot > 100  # ADU above the frame median
    for shift in [(1, 0), (-1, 0), (0, 1), (0, -1)]:
        assert at_spot > 1.2 * spot_contrast(images, t, px, shift), shift
    col = nm_to_px(t["x_nm"].to_numpy(), px)
    row = nm_to_px(t["y_nm"].to_numpy(), px)
    frame = t["frame"].to_numpy()
    assert np.abs(centroid_offset_px(images, col, row, frame)).max() < 0.05
    # the other convention (pixel centres at +0.5) is clearly off
    assert np.abs(centroid_offset_px(images, col + 0.5, row + 0.5, frame)).min() > 0.2


def test_thunderstorm_positions_land_on_spots(shared_data: Path) -> None:
    images = tifffile.imread(shared_data / "thunderstorm_sim" / "frames.tif")
    t = read_table(shared_data / "thunderstorm_sim" / "ground_truth.csv")
    check_positions_on_spots(images, t, 100.0)
    # frames: 0-based after reading; one frame off, the spots are gone
    on = spot_contrast(images, t, 100.0, (0, 0))
    for off in (1, -1):
        moved = t.assign(frame=t["frame"] + off)
        moved = moved[(moved["frame"] >= 0) & (moved["frame"] < len(images))]
        assert on > 3 * spot_contrast(images, moved, 100.0, (0, 0))


def test_challenge_positions_land_on_spots(shared_data: Path) -> None:
    image = tifffile.imread(shared_data / "tubulins1_frame20" / "frame.tif")
    t = read_table(shared_data / "tubulins1_frame20" / "ground_truth.csv")
    check_positions_on_spots(image[None], t.assign(frame=0), 150.0)


def test_picasso_positions_land_on_spots(shared_data: Path) -> None:
    data = shared_data / "picasso_sim"
    raw = np.fromfile(data / "testdata.raw", dtype="<u2").reshape(100, 32, 32)
    t = read_table(data / "testdata_locs.hdf5", pixel_size_nm=160)
    t = t[t["frame"] < len(raw)]  # the raw movie is the first 100 of 1000 frames
    assert len(t) >= 20
    check_positions_on_spots(raw, t, 160.0)


# ----------------------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match=r"nope\.csv: file not found"):
        read_table(tmp_path / "nope.csv")


@pytest.mark.parametrize("name", ["bad.parquet", "bad.hdf5", "bad.h5"])
def test_garbage_binary_files(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x00\x01 this is not a table \xff" * 10)
    with pytest.raises(InputFileError, match=str(path).replace(".", r"\.")):
        read_table(path)


def test_garbage_csv(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(b"\xff\xfe\x00garbage\n\x00\x01,\x02\n")
    with pytest.raises(DenselocError, match=r"bad\.csv"):
        read_table(path)


@pytest.mark.parametrize(
    ("header", "row"),
    [
        ("frame,y_nm", "0,10"),
        ('"id","frame","y [nm]"', "1,1,10"),
        ("Ground-truth,frame,ynano,znano,intensity", "1,1,10,0,5"),
    ],
)
def test_csv_missing_x_column(tmp_path: Path, header: str, row: str) -> None:
    path = tmp_path / "nox.csv"
    path.write_text(f"{header}\n{row}\n")
    with pytest.raises(TableError, match=r"nox\.csv: missing column\(s\) x_nm"):
        read_table(path)


def test_hdf5_of_unknown_layout(tmp_path: Path) -> None:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros((2, 2))
    with pytest.raises(InputFileError, match=r"other\.h5: .*Picasso.*DECODE"):
        read_table(path)


def test_unknown_extension_and_format(tmp_path: Path) -> None:
    path = tmp_path / "t.xls"
    path.write_text("frame,x_nm,y_nm\n")
    with pytest.raises(InputFileError, match=r"t\.xls: unknown table format '\.xls'"):
        read_table(path)
    with pytest.raises(DenselocError, match="unknown table format"):
        write_table(make_table(2), path)
    with pytest.raises(DenselocError, match="`format` must be one of"):
        read_table(tmp_path / "t.xls", format="excel")
    with pytest.raises(DenselocError, match="read only"):
        write_table(make_table(2), tmp_path / "t.csv", format="challenge")


def test_writer_validates_first(tmp_path: Path) -> None:
    bad = make_table(3).drop(columns="x_nm")
    for fmt in WRITABLE:
        with pytest.raises(TableError, match="x_nm"):
            write_table(bad, tmp_path / f"t{SUFFIX[fmt]}", format=fmt)
    assert list(tmp_path.iterdir()) == []


def test_bad_pixel_size(tmp_path: Path) -> None:
    with pytest.raises(DenselocError, match="`pixel_size_nm` must be positive, got -100"):
        write_table(make_table(2), tmp_path / "t.h5", pixel_size_nm=-100)
    write_table(make_table(2), tmp_path / "t.hdf5", pixel_size_nm=100)
    (tmp_path / "t.yaml").unlink()  # a Picasso table without its sidecar: positions in px
    with pytest.raises(DenselocError, match=r"0\.16 nm, outside the 10-1000 nm"):
        read_table(tmp_path / "t.hdf5", pixel_size_nm=0.16)  # um typed as nm
