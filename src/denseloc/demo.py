"""The demo behind ``make demo``: run the pipeline on built-in defaults and report.

Until the network and the localization pipeline land, the demo simulates a movie with the
default microscope and camera, and shows what was made: a summary and a preview image of
the first frames with the ground-truth positions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from denseloc.config import Config

__all__ = ["plot_frames_with_truth", "run_demo"]


def plot_frames_with_truth(
    frames_path: Path, truth_path: Path, pixel_size_nm: float, out_png: Path, n: int = 4
) -> Path:
    """Save a PNG of the first `n` frames with ground-truth positions marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import tifffile

    from denseloc._atomic import atomic_path
    from denseloc.table import nm_to_px

    frames = tifffile.imread(frames_path, key=range(n))
    truth = pd.read_csv(truth_path)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    for t, ax in enumerate(axes[0]):
        ax.imshow(frames[t], cmap="gray")
        rows = truth[truth["frame"] == t]
        ax.scatter(
            nm_to_px(rows["x_nm"], pixel_size_nm),
            nm_to_px(rows["y_nm"], pixel_size_nm),
            s=40,
            facecolors="none",
            edgecolors="tab:red",
            linewidths=0.8,
        )
        ax.set_title(f"frame {t}: {len(rows)} emitters")
        ax.set_axis_off()
    fig.suptitle("simulated frames (ADU) with ground truth (red)")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out_png


def run_demo(
    config: Config,
    out_dir: Path,
    *,
    simulate: Callable[[Config, Path], dict[str, Path]],
    echo: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Simulate a movie with `config` into `out_dir` and write a preview and a summary."""
    import pandas as pd

    paths = simulate(config, out_dir)
    paths["preview"] = plot_frames_with_truth(
        paths["frames"], paths["ground_truth"], config.image.pixel_size_nm, out_dir / "preview.png"
    )
    truth = pd.read_csv(paths["ground_truth"])
    per_frame = truth.groupby("frame").size().reindex(
        range(config.simulation.n_frames), fill_value=0
    )
    echo(f"simulated {config.simulation.n_frames} frames of {config.image.size_px} px")
    echo(f"  emitters on per frame: {per_frame.mean():.1f} (configured "
         f"{config.emitters.density_per_um2} per um^2)")
    echo(f"  photons per emitter and frame: median {truth['photons'].median():.0f}")
    echo(f"  z range: {truth['z_nm'].min():.0f} .. {truth['z_nm'].max():.0f} nm")
    for key, path in paths.items():
        echo(f"  {key:13s} {path}")
    return paths
