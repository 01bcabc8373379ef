"""The demo behind ``make demo``: the whole pipeline on built-in defaults.

1. Simulate a 3D movie of random filaments with the microscope the bundled model was trained
   for (astigmatic spline PSF calibrated from the EPFL 2016 beads, EMCCD camera, 100 nm
   pixels).
2. Localize it with the bundled network and, for comparison, the first frames with the
   classical MLE fitter (it is about 50 times slower).
3. Evaluate both against the ground truth (SMLM-challenge metrics, Cramer-Rao ratios,
   uncertainty calibration), render the super-resolution image coloured by z, measure its FRC
   resolution, and write a report folder: images, metrics JSON, error and sigma-calibration
   plots and a markdown summary.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from denseloc.config import Config
from denseloc.errors import DenselocWarning

__all__ = ["demo_config", "plot_frames_with_truth", "run_demo"]

DEMO_DENSITY_PER_UM2 = 0.5
DEMO_FRAMES = 1000
DEMO_MLE_FRAMES = 200


def demo_config(model_config: Config, n_frames: int = DEMO_FRAMES) -> Config:
    """The simulation of the demo: the model's microscope, 64x64 px, filaments, 1000 frames.

    A camera's sCMOS maps are left out (they are a chip's, not the demo's frames).
    """
    return model_config.model_copy(update={
        "image": model_config.image.model_copy(update={"size_px": (64, 64)}),
        "camera": model_config.camera.without_maps(),
        "emitters": model_config.emitters.model_copy(
            update={"density_per_um2": DEMO_DENSITY_PER_UM2, "count_per_frame": None,
                    "structure": "filaments", "filaments": 6}),
        "simulation": model_config.simulation.model_copy(
            update={"n_frames": n_frames, "seed": 2021}),
    })


def plot_frames_with_truth(
    frames_path: Path,
    truth_path: Path,
    pixel_size_nm: float,
    out_png: Path,
    n: int = 4,
    predictions: Any = None,
) -> Path:
    """Save a PNG of the first `n` frames with ground truth (and predictions) marked."""
    import pandas as pd
    import tifffile

    from denseloc._plotting import new_figure, save_figure
    from denseloc.table import nm_to_px

    frames = tifffile.imread(frames_path, key=range(n))
    truth = pd.read_csv(truth_path)
    fig = new_figure(3.2 * n, 3.5)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for t, ax in enumerate(axes):
        ax.imshow(frames[t], cmap="gray")
        rows = truth[truth["frame"] == t]
        ax.scatter(nm_to_px(rows["x_nm"], pixel_size_nm), nm_to_px(rows["y_nm"], pixel_size_nm),
                   s=50, facecolors="none", edgecolors="tab:red", linewidths=0.8,
                   label="ground truth")
        if predictions is not None:
            pred = predictions[predictions["frame"] == t]
            ax.scatter(nm_to_px(pred["x_nm"], pixel_size_nm),
                       nm_to_px(pred["y_nm"], pixel_size_nm),
                       s=12, marker="+", color="tab:cyan", linewidths=0.8, label="network")
        ax.set_title(f"frame {t}: {len(rows)} emitters")
        ax.set_axis_off()
    axes[0].legend(loc="lower left", fontsize=7)
    fig.suptitle("simulated frames (ADU): ground truth (red), network localizations (cyan)")
    return save_figure(fig, out_png, dpi=100)


def run_demo(
    out_dir: Path,
    *,
    model_dir: str | Path,
    simulate: Callable[[Config, Path], dict[str, Path]],
    echo: Callable[[str], None] = print,
    n_frames: int = DEMO_FRAMES,
    mle_frames: int = DEMO_MLE_FRAMES,
) -> dict[str, Path]:
    """Run the demo into `out_dir` with the model in `model_dir`; return the written files."""
    import pandas as pd

    from denseloc._atomic import atomic_path
    from denseloc._runtime import configure_cpu
    from denseloc.calibration import resolve_builtin
    from denseloc.evaluate import evaluate, plot_evaluation
    from denseloc.evaluate.crlb import add_crlb_columns
    from denseloc.io import open_movie, write_table
    from denseloc.localize.pipeline import localize_movie_mle, localize_movie_network
    from denseloc.train.artifact import TrainedModel

    configure_cpu()
    model = TrainedModel.load(resolve_builtin(model_dir))
    for problem in model.changed_inputs(prefix="psf."):
        echo(f"warning: {problem}: the demo simulates with the PSF as it is now")
    config = demo_config(model.config, n_frames)
    out_dir = Path(out_dir)
    paths = simulate(config, out_dir / "simulation")
    truth = add_crlb_columns(pd.read_csv(paths["ground_truth"]), config,
                             frame_shape=config.image.size_px)
    mle_frames = min(mle_frames, n_frames)
    tables = {}
    with open_movie(paths["frames"]) as movie:
        echo(f"localizing {n_frames} frames with the network ...")
        # The frames were simulated with this config (the model's, maps left out): no check.
        tables["network"] = localize_movie_network(movie, model, config, check=False)
        echo(f"localizing the first {mle_frames} frames with the classical MLE fitter ...")
        tables["mle"] = localize_movie_mle(movie, config, frames=range(mle_frames))
    first = {name: t[t["frame"] < mle_frames] for name, t in (("truth", truth), *tables.items())}
    runs = {"network": (tables["network"], truth), "network_first": (first["network"],
            first["truth"]), "mle_first": (tables["mle"], first["truth"])}
    results: dict[str, Any] = {"frames": n_frames, "mle_frames": mle_frames}
    for method, table in tables.items():
        paths[f"locs_{method}"] = out_dir / f"localizations_{method}.csv"
        write_table(table, paths[f"locs_{method}"])
    for name, (table, reference) in runs.items():
        metrics, pairs = evaluate(table, reference, min_photons=500.0,
                                  is_3d=config.psf.is_3d)
        results[name] = metrics.to_dict()
        if name != "network_first":
            method = name.split("_")[0]
            for png in plot_evaluation(pairs, out_dir / f"plots_{method}",
                                       is_3d=config.psf.is_3d):
                paths[f"{method}_{png.stem}"] = png
    results.update(_images(tables["network"], truth, config, out_dir, paths))
    paths["metrics"] = out_dir / "metrics.json"
    with atomic_path(paths["metrics"]) as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n")
    paths["preview"] = plot_frames_with_truth(
        paths["frames"], paths["ground_truth"], config.image.pixel_size_nm,
        out_dir / "preview.png", predictions=tables["network"],
    )
    paths["summary"] = out_dir / "summary.md"
    summary = _summary(config, model, results, len(truth))
    with atomic_path(paths["summary"]) as tmp:
        tmp.write_text(summary)
    echo(summary)
    echo(f"report written to {out_dir}/")
    return paths


RENDER_PIXEL_NM = 10.0
TRUTH_BLUR_NM = 10.0


def _images(network: Any, truth: Any, config: Config, out_dir: Path,
            paths: dict[str, Path]) -> dict[str, Any]:
    """Rendered images (network and ground truth, coloured by z) and the FRC resolution."""
    from denseloc._plotting import new_figure, save_figure
    from denseloc.analysis.frc import fourier_ring_correlation, plot_frc
    from denseloc.analysis.render import render_colored, save_image

    height, width = config.image.size_px
    px = config.image.pixel_size_nm
    extent = (0.0, width * px, 0.0, height * px)
    z_range = config.emitters.z_range_nm
    truth = truth.assign(sigma_x_nm=TRUTH_BLUR_NM, sigma_y_nm=TRUTH_BLUR_NM)
    images = {}
    with warnings.catch_warnings():
        # The few most uncertain network localizations (sigma above 250 nm) may be drawn cut
        # at the window's edge: invisible at this brightness, not worth a warning here.
        warnings.filterwarnings("ignore", message=r".* are drawn only within",
                                category=DenselocWarning)
        for name, table in (("network", network), ("truth", truth)):
            images[name] = render_colored(table, by="z_nm", value_range=z_range,
                                          mode="gaussian", pixel_size_nm=RENDER_PIXEL_NM,
                                          extent_nm=extent)
    paths["render"] = save_image(images["network"], out_dir / "render_network_z.png",
                                 pixel_size_nm=RENDER_PIXEL_NM)
    fig = new_figure(11.0, 5.6)
    axes = fig.subplots(1, 2)
    titles = {"truth": f"ground truth ({TRUTH_BLUR_NM:g} nm blur)",
              "network": "network (each with its predicted sigma)"}
    for ax, (name, title) in zip(axes, titles.items(), strict=True):
        ax.imshow(images[name], extent=(0, width * px / 1000, height * px / 1000, 0))
        ax.set_title(title)
        ax.set_xlabel("x (um)")
    axes[0].set_ylabel("y (um)")
    sm = _z_colorbar(z_range)
    fig.colorbar(sm, ax=axes, label="z (nm)", shrink=0.8)
    paths["render_comparison"] = save_figure(fig, out_dir / "render_comparison.png")
    out: dict[str, Any] = {"render_pixel_nm": RENDER_PIXEL_NM}
    if len(network) >= 100 and network["frame"].nunique() >= 2:
        frc = fourier_ring_correlation(network, pixel_size_nm=5.0)
        paths["frc"] = plot_frc(frc, out_dir / "frc.png")
        out["frc_resolution_nm"] = frc.to_dict()["resolution_nm"]
    out["localizations_per_frame"] = float(len(network) / max(1, network["frame"].nunique()))
    return out


def _z_colorbar(z_range: tuple[float, float]):
    from matplotlib import cm, colors

    return cm.ScalarMappable(norm=colors.Normalize(*z_range), cmap="turbo")


def _summary(config: Config, model: Any, results: dict[str, dict], n_truth: int) -> str:
    rows = [
        ("Jaccard (GT >= 500 photons)", "jaccard", "{:.3f}"),
        ("recall", "recall", "{:.3f}"),
        ("precision", "precision", "{:.3f}"),
        ("RMSE lateral (nm)", "rmse_lateral_nm", "{:.1f}"),
        ("RMSE axial (nm)", "rmse_axial_nm", "{:.1f}"),
        ("error / CRLB, x y z", ("crlb_ratio_x", "crlb_ratio_y", "crlb_ratio_z"), "{:.2f}"),
        ("error / predicted sigma, x y z", ("z_score_rms_x", "z_score_rms_y", "z_score_rms_z"),
         "{:.2f}"),
    ]

    def cell(values: dict, key: Any, fmt: str) -> str:
        keys = key if isinstance(key, tuple) else (key,)
        return " / ".join("n/a" if values.get(k) is None else fmt.format(values[k]) for k in keys)

    net = model.net
    wider = "" if net.context_filters == net.filters else (
        f" ({net.context_filters} in the temporal U-Net)")
    lines = [
        "# denseloc demo",
        "",
        f"Simulated {config.simulation.n_frames} frames of {config.image.size_px[0]}x"
        f"{config.image.size_px[1]} px ({config.image.pixel_size_nm:g} nm pixels), "
        f"{config.emitters.density_per_um2} emitters/um^2, z {config.emitters.z_range_nm[0]:g}"
        f"..{config.emitters.z_range_nm[1]:g} nm, {n_truth} ground-truth localizations; "
        f"PSF {config.psf.path or config.psf.kind}, {config.camera.kind} camera.",
        f"Bundled model: {model.net.filters} filters{wider}, trained "
        f"{model.summary.get('minutes', '?')} CPU-minutes, threshold {model.threshold:.2f}.",
        "",
        f"| metric | network, all {results['frames']} frames | network, first "
        f"{results['mle_frames']} | classical MLE, first {results['mle_frames']} |",
        "| --- | --- | --- | --- |",
    ]
    for label, key, fmt in rows:
        lines.append(f"| {label} | {cell(results['network'], key, fmt)} | "
                     f"{cell(results['network_first'], key, fmt)} | "
                     f"{cell(results['mle_first'], key, fmt)} |")
    frc = results.get("frc_resolution_nm")
    lines += [
        "",
        f"FRC resolution of the network's image (1/7 threshold): "
        f"{'n/a' if frc is None else f'{frc:.1f} nm'}.",
        "",
        "Files: `render_comparison.png` (ground truth and network, coloured by z), "
        "`render_network_z.png` (10 nm pixels), `frc.png`, `preview.png` (first frames with "
        "ground truth and localizations), `plots_network/` and `plots_mle/` (errors, error "
        "against z, error against predicted sigma), `metrics.json`, `localizations_*.csv`.",
    ]
    return "\n".join(lines) + "\n"
