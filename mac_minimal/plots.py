"""Small plotting helpers, so that a chapter's figure cell shows what is plotted, not how.

* :func:`log_log` draws measured series (seconds, bytes, ...) against a swept size on log-log axes,
  with a tick at every measured size: the benchmark figures of chapters 3, 4 and 7.
* :func:`legend_below` puts one legend under a figure's panels.
* :func:`ratio_bars` draws ratios as grouped bars, each group against a floor drawn as a
  horizontal line across it: chapter 7's time ratios against the flop ratio.
"""

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter


def log_log(ax: Axes, series: dict[str, tuple[list[float], list[float]]], xlabel: str,
            ylabel: str | None = None, title: str | None = None, base: int = 10,
            colors: dict[str, str] | None = None, legend: bool = True) -> Axes:
    """Plot ``series`` (label -> (xs, ys)) as lines with markers on log-log axes and return ``ax``.

    The x ticks are the measured sizes, written out (no ``10^k`` labels); the legend names the series
    (``legend=False``: none, e.g. for one legend under several panels, :func:`legend_below`);
    ``colors`` (label -> colour) keeps a series the same colour across panels.
    """
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, "o-", label=label, color=(colors or {}).get(label))
    ax.set_xscale("log", base=base)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    ticks = sorted({x for xs, _ in series.values() for x in xs})
    ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    if legend:
        ax.legend(fontsize=9)
    return ax


def legend_below(fig: Figure, ax: Axes, ncol: int = 3) -> None:
    """One legend for all panels, under them, naming the series drawn in ``ax`` (so it covers no line)."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=9, frameon=False)


def ratio_bars(ax: Axes, groups: dict[str, dict[str, float]], floors: dict[str, float],
               ylabel: str, title: str | None = None, floor_label: str = "floor",
               fmt: str = "{:.1f}x", colors: dict[str, str] | None = None) -> Axes:
    """Grouped bars of ``groups`` (group -> (bar -> value)) with each group's floor; returns ``ax``.

    Every group has the same bars in the same order and colour (one legend entry per bar), with
    its value written above it in ``fmt``; ``floors`` (group -> value) is drawn as a black line
    across its group, in the legend (first) as ``floor_label``, its value written at its right end.
    """
    names = list(next(iter(groups.values())))
    width = 0.7 / len(names)   # a group takes 0.7 of the unit between groups
    for g, (group, bars) in enumerate(groups.items()):
        if list(bars) != names:
            raise ValueError(f"group {group!r} has bars {list(bars)}, expected {names}")
        for i, name in enumerate(names):
            x = g - 0.35 + (i + 0.5) * width
            ax.bar(x, bars[name], width * 0.9, color=(colors or {}).get(name, f"C{i}"),
                   label=name if g == 0 else None)
            ax.text(x, bars[name], fmt.format(bars[name]), ha="center", va="bottom", fontsize=9)
        floor = floors[group]
        ax.hlines(floor, g - 0.38, g + 0.38, colors="black", linewidths=2,
                  label=floor_label if g == 0 else None)
        ax.text(g + 0.4, floor, fmt.format(floor), ha="left", va="center", fontsize=9)
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_xlim(-0.6, len(groups) - 0.3)
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    return ax
