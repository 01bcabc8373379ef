"""The localization table schema."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from denseloc.table import COLUMNS, TableError, empty, nm_to_px, px_to_nm, validate


def test_validate_orders_casts_and_keeps_extras_and_attrs() -> None:
    df = pd.DataFrame({"extra": [1, 2], "y_nm": [1, 2], "x_nm": [3.0, 4.0], "frame": [0.0, 5.0]})
    df.attrs["pixel_size_nm"] = 100.0
    out = validate(df)
    assert list(out.columns) == ["frame", "x_nm", "y_nm", "z_nm", "extra"]
    assert out["frame"].dtype == np.int64 and out["y_nm"].dtype == np.float64
    assert (out["z_nm"] == 0).all()
    assert out.attrs["pixel_size_nm"] == 100.0


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"frame": [0], "x_nm": [1.0]}, "missing column.*y_nm"),
        ({"frame": [-1], "x_nm": [1.0], "y_nm": [1.0]}, "frame must be >= 0"),
        ({"frame": [0.5], "x_nm": [1.0], "y_nm": [1.0]}, "frame must hold integers"),
        ({"frame": [0], "x_nm": [np.nan], "y_nm": [1.0]}, "x_nm has missing"),
        ({"frame": [0], "x_nm": ["a"], "y_nm": [1.0]}, "x_nm holds 1 value.*not numbers"),
        (
            {"frame": [0, 1, 2], "x_nm": [1.0] * 3, "y_nm": [1.0] * 3, "photons": [5, "1,5", "x"]},
            r"photons holds 2 value\(s\) that are not numbers, e.g. '1,5' in row 1",
        ),
    ],
)
def test_invalid_tables(data, match) -> None:
    with pytest.raises(TableError, match=match):
        validate(pd.DataFrame(data), name="locs.csv")


def test_missing_optional_values_are_nan() -> None:
    t = validate(pd.DataFrame({"frame": [0, 1], "x_nm": [1.0, 2.0], "y_nm": [1.0, 2.0],
                               "photons": ["12.5", None], "bg": [np.nan, 3]}))
    np.testing.assert_array_equal(t["photons"], [12.5, np.nan])
    np.testing.assert_array_equal(t["bg"], [np.nan, 3.0])


def test_empty_table_and_schema_units() -> None:
    assert len(empty()) == 0 and list(empty().columns) == ["frame", "x_nm", "y_nm", "z_nm"]
    assert all(name.endswith(("_nm", "photons")) or col.unit in ("1", "frame", "photons/px")
               for name, col in COLUMNS.items())


def test_pixel_convention() -> None:
    assert nm_to_px(50.0, 100.0) == pytest.approx(0.0)  # centre of pixel 0
    assert px_to_nm(nm_to_px(1234.5, 160.0), 160.0) == pytest.approx(1234.5)
