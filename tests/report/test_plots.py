"""Specification of mpqjax.report.plots: the Pareto and Hessian plots are drawn PNGs, with their key marks."""

import os

import matplotlib.pyplot as plt
import numpy as np

from mpqjax import report


def read_png(path):
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 1000
    image = plt.imread(path)[..., :3]
    assert image.ndim == 3 and min(image.shape[:2]) > 200
    return image


def colour_pixels(image, rgb, tolerance=0.04):
    return int(np.sum(np.all(np.abs(image - np.array(rgb)) < tolerance, axis=-1)))


def test_pareto_plot_is_a_drawn_png_with_the_best_highlighted(finished):
    folder, _, _ = finished
    image = read_png(os.path.join(folder, "pareto.png"))
    assert np.mean(np.any(image < 0.9, axis=-1)) > 0.02  # not blank
    assert colour_pixels(image, (1.0, 0.843, 0.0)) > 20  # the gold star of the best configuration
    assert colour_pixels(image, (1.0, 0.498, 0.055)) > 20  # the orange Pareto front (tab:orange)


def test_pareto_plot_of_a_running_search_with_only_failed_trials_or_none(run_folders, tmp_path):
    only_failed = [run_folders.trial_record(t, [4, 4, 4], [1.0] * 3, failed=True) for t in range(3)]
    for name, trials in (("failed", only_failed), ("empty", [])):
        run_folders.write(tmp_path / name, status="running", trials=trials, best=False, baseline=False,
                          hessian=False)
        report.plot_pareto(tmp_path / f"{name}.png", report.load_run(tmp_path / name))
        image = read_png(tmp_path / f"{name}.png")
        assert colour_pixels(image, (1.0, 0.843, 0.0)) == 0  # no best configuration yet
    assert sorted(name for name in os.listdir(tmp_path) if name.endswith(".png")) == ["empty.png", "failed.png"]


def test_hessian_plot_matches_the_cli_input_and_is_drawn(finished, run_folders, tmp_path):
    folder, _, _ = finished
    image = read_png(os.path.join(folder, "hessian.png"))
    assert np.mean(np.any(image < 0.9, axis=-1)) > 0.02
    assert colour_pixels(image, (0.65, 0.65, 0.65), 0.01) > 50  # the layer fixed by hand, in grey
    # A trace the estimator could not compute (None) still plots.
    hessian = run_folders.HESSIAN
    broken = {**hessian, "layers": [{**hessian["layers"][0], "trace": None, "trace_per_weight": None},
                                    *hessian["layers"][1:]]}
    report.plot_hessian(tmp_path / "h.png", broken)
    read_png(tmp_path / "h.png")
