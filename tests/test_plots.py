"""The plotting helper draws the series it is given, on log-log axes with the measured sizes as ticks."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mac_minimal.plots import log_log  # noqa: E402


def test_log_log_draws_each_series_with_its_ticks_and_colours():
    _, ax = plt.subplots()
    log_log(ax, {"a": ([1, 4, 16], [1.0, 2.0, 3.0]), "b": ([4, 64], [5.0, 6.0])}, "n", "seconds",
            "title", base=2, colors={"b": "C3"})
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["a", "b"]
    assert np.array_equal(lines[1].get_xdata(), [4, 64]) and lines[1].get_color() == "C3"
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "4", "16", "64"]
    assert ax.get_ylabel() == "seconds" and ax.get_title() == "title"
    plt.close("all")


def test_legend_below_names_the_series_once_under_the_panels():
    from mac_minimal.plots import legend_below

    fig, axes = plt.subplots(1, 2)
    for ax in axes:
        log_log(ax, {"a": ([1, 2], [1.0, 2.0]), "b": ([1, 2], [2.0, 3.0])}, "n", legend=False)
    assert all(ax.get_legend() is None for ax in axes)
    legend_below(fig, axes[0])
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["a", "b"]
    plt.close("all")


def test_ratio_bars_draws_each_group_with_its_floor():
    from mac_minimal.plots import ratio_bars

    _, ax = plt.subplots()
    groups = {"A": {"eager": 11.0, "compiled": 5.0}, "B": {"eager": 15.0, "compiled": 6.0}}
    ratio_bars(ax, groups, {"A": 5.5, "B": 5.6}, "ratio", "title", floor_label="flops")
    heights = [patch.get_height() for patch in ax.patches]
    assert heights == [11.0, 5.0, 15.0, 6.0]
    floors = [segments[0][0][1] for segments in
              (c.get_segments() for c in ax.collections)]
    assert floors == [5.5, 5.6]
    handles, labels = ax.get_legend_handles_labels()
    assert labels == ["flops", "eager", "compiled"]  # the floor first
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A", "B"]
    assert {"11.0x", "5.0x", "5.5x", "5.6x"} <= {t.get_text() for t in ax.texts}
    assert ax.get_ylabel() == "ratio" and ax.get_title() == "title"
    plt.close("all")


def test_ratio_bars_refuses_groups_with_different_bars():
    import pytest

    from mac_minimal.plots import ratio_bars

    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="expected"):
        ratio_bars(ax, {"A": {"x": 1.0}, "B": {"y": 1.0}}, {"A": 1.0, "B": 1.0}, "r")
    plt.close("all")
