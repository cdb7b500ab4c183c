"""Pictures of the machine: diagrams drawn from code, so that they stay true to it.

Each function draws on a matplotlib ``Axes`` and returns it; the chapters call them.

* :func:`mac_block` (chapter 6): one MAC layer on one segment, eqs. (21)-(25) of the paper: retrieve
  ``h`` from the memory as it stood before the segment, attend over ``[p | h | S]``, write the attention
  output ``y`` into the memory, combine ``y`` with the updated memory's reading of it.
* :func:`attention_mask` (chapter 6): a boolean mask over ``[p | h | S]`` as a picture, with its blocks
  labelled (what :func:`mac_minimal.mac_attention.mac_mask` builds).
* :func:`segments_and_chunks` (chapter 7): a sequence cut into attention segments and memory chunks,
  with the memory carried from segment to segment.
* :func:`mmrec_step` (chapter 2): one step of the MM-Rec block, ``h_t`` from ``h_{t-1}`` and the banks.
"""

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.patches import FancyBboxPatch
from torch import Tensor

COLORS = {"persistent": "#c7c7c7", "retrieved": "#9ecae1", "segment": "#fdd0a2", "memory": "#c7e9c0",
          "output": "#fcbba1"}


def _box(ax: Axes, x: float, y: float, w: float, h: float, text: str, color: str, size: int = 9) -> None:
    """A rounded box with centred text; (x, y) is the lower-left corner."""
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=color, edgecolor="black", linewidth=0.8))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)


def _arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float], label: str = "",
           offset: tuple[float, float] = (0.0, 0.12), bend: float = 0.0) -> None:
    """An arrow from ``start`` to ``end`` (curved by ``bend``), labelled at its middle (shifted by ``offset``)."""
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="-|>", color="black", lw=0.9, shrinkA=2,
                                                           shrinkB=2, connectionstyle=f"arc3,rad={bend}"))
    if label:
        ax.text((start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1], label,
                ha="center", va="bottom", fontsize=8, style="italic")


def _canvas(ax: Axes | None, width: float, height: float, size: tuple[float, float]) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=size)
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    return ax


def mac_block(ax: Axes | None = None) -> Axes:
    """One MAC layer on one segment S (the paper's eqs. 21-25), left to right."""
    ax = _canvas(ax, 13.0, 5.6, (10, 4.3))
    _box(ax, 0.2, 3.6, 1.8, 0.8, r"segment $S$" + "\n(c tokens)", COLORS["segment"])
    _box(ax, 0.2, 0.5, 1.8, 0.9, r"memory $\mathcal{M}_{t-1}$" + "\n(before S)", COLORS["memory"])
    _box(ax, 3.0, 2.1, 1.6, 0.8, r"$h = \mathcal{M}^*_{t-1}(q)$", COLORS["retrieved"])
    _arrow(ax, (2.0, 4.0), (3.8, 2.95), "")
    _arrow(ax, (2.0, 0.95), (3.8, 2.05), "retrieve (21)", offset=(0.3, -0.45))
    # the context [p | h | S]: three blocks of cells
    cells = [("persistent", 3, "p"), ("retrieved", 4, "h"), ("segment", 4, "S")]
    x = 5.3
    for kind, count, label in cells:
        for i in range(count):
            ax.add_patch(plt.Rectangle((x + 0.32 * i, 3.7), 0.32, 0.6, facecolor=COLORS[kind], edgecolor="black",
                                       linewidth=0.6))
        ax.text(x + 0.16 * count, 3.55, label, ha="center", va="top", fontsize=9)
        x += 0.32 * count + 0.12
    ax.text(7.2, 3.05, r"context $[\,p \,\|\, h \,\|\, S\,]$ (22)", ha="center", va="top", fontsize=8)
    _arrow(ax, (4.6, 2.5), (6.4, 3.65), "")
    _arrow(ax, (1.1, 4.4), (8.2, 4.45), bend=-0.25)                  # S itself joins the context
    _box(ax, 9.6, 3.5, 1.5, 1.0, "attend (23)\ncausal mask", COLORS["output"])
    _arrow(ax, (9.1, 4.0), (9.6, 4.0))
    _box(ax, 9.9, 1.9, 0.9, 0.7, r"$y$", COLORS["output"])
    _arrow(ax, (10.35, 3.5), (10.35, 2.6))
    _box(ax, 5.6, 0.5, 2.2, 0.9, r"memory $\mathcal{M}_t$" + "\n(after each token)", COLORS["memory"])
    _arrow(ax, (9.9, 2.1), (7.8, 1.0), "write (24)", offset=(0.1, 0.1))
    _arrow(ax, (2.0, 0.8), (5.6, 0.8))
    _box(ax, 10.9, 0.4, 2.0, 1.0, "combine (25)\n" + r"$o = y \otimes \mathcal{M}^*_t(y)$", COLORS["output"], 8)
    _arrow(ax, (10.6, 1.9), (11.6, 1.4))
    _arrow(ax, (7.8, 0.8), (10.9, 0.8))
    ax.text(6.7, 0.1, r"$\mathcal{M}_t$ is the next segment's $\mathcal{M}_{t-1}$", ha="center", fontsize=8)
    return ax


def attention_mask(mask: Tensor, num_persistent: int, retrieved: int, ax: Axes | None = None) -> Axes:
    """A (queries, keys) boolean mask over ``[p | h | S]`` as black (allowed) and white cells.

    ``num_persistent`` and ``retrieved`` are the widths of the first two blocks; the rest is S.
    """
    rows, cols = mask.shape
    if ax is None:
        _, ax = plt.subplots(figsize=(0.35 * cols + 1, 0.35 * rows + 0.8))
    ax.imshow(mask.int().numpy(), cmap="Greys", vmin=0, vmax=1)
    ax.set_xticks(range(cols), [f"p{i}" for i in range(num_persistent)]
                  + [f"h{i}" for i in range(retrieved)] + [f"S{i}" for i in range(cols - num_persistent - retrieved)],
                  fontsize=8, rotation=90)
    ax.set_yticks(range(rows), [f"query {j}" for j in range(rows)], fontsize=8)
    for edge in (num_persistent, num_persistent + retrieved):
        ax.axvline(edge - 0.5, color="tab:red", lw=1.5)
    ax.set_xticks([c - 0.5 for c in range(cols + 1)], minor=True)
    ax.set_yticks([r - 0.5 for r in range(rows + 1)], minor=True)
    ax.grid(which="minor", color="#999999", lw=0.4)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("keys: persistent | retrieved h | segment S (black: may attend)", fontsize=8)
    return ax


def segments_and_chunks(n: int, segment_len: int, chunk_size: int, ax: Axes | None = None) -> Axes:
    """``n`` tokens cut into attention segments (coloured bands) and memory chunks (ticks below).

    Attention stays inside a segment; the memory is written chunk by chunk and carried across
    segment boundaries (arrows).
    """
    ax = _canvas(ax, n + 2.0, 5.0, (max(6.0, 0.3 * n), 3))
    for start in range(0, n, segment_len):
        width = min(segment_len, n - start)
        ax.add_patch(plt.Rectangle((1 + start, 2.4), width, 1.0, facecolor=COLORS["segment"], edgecolor="black"))
        ax.text(1 + start + width / 2, 3.55, f"segment {start // segment_len + 1}", ha="center", fontsize=8)
        if start + segment_len < n:
            ax.annotate("", xy=(1 + start + segment_len + 0.8, 1.4), xytext=(1 + start + segment_len - 0.8, 1.4),
                        arrowprops=dict(arrowstyle="-|>", color="tab:green", lw=1.2))
    for t in range(n):
        ax.add_patch(plt.Rectangle((1 + t + 0.1, 2.55), 0.8, 0.7, facecolor="white", edgecolor="#888888", lw=0.5))
    for start in range(0, n, chunk_size):
        width = min(chunk_size, n - start)
        ax.add_patch(plt.Rectangle((1 + start, 1.6), width, 0.5, facecolor=COLORS["memory"], edgecolor="black",
                                   lw=0.6))
    ax.text(0.9, 1.85, "memory chunks", ha="right", va="center", fontsize=8)
    ax.text(0.9, 2.9, "tokens", ha="right", va="center", fontsize=8)
    ax.text(1 + n / 2, 0.6, "green arrows: the memory carried from one segment to the next", ha="center",
            fontsize=8, color="tab:green")
    ax.set_xlim(-4, n + 2)
    return ax


def mmrec_step(ax: Axes | None = None) -> Axes:
    """One MM-Rec step (chapter 2): the gated recurrence and the read of both memory banks."""
    ax = _canvas(ax, 12.0, 5.0, (9, 3.8))
    _box(ax, 0.2, 3.6, 1.6, 0.8, r"$x_t$", COLORS["segment"])
    _box(ax, 0.2, 1.6, 1.6, 0.8, r"$h_{t-1}$", COLORS["retrieved"])
    _box(ax, 2.8, 3.5, 2.6, 1.0, r"project: $q, k, v, z$," + "\n" + r"decay $\gamma_t$", COLORS["persistent"], 8)
    _arrow(ax, (1.8, 4.0), (2.8, 4.0))
    _box(ax, 2.8, 1.5, 2.6, 1.0, r"$h_t = z_t \odot \sigma(W_g h_{t-1})$" + "\n" + r"$+ \gamma_t \odot h_{t-1}$",
         COLORS["retrieved"], 8)
    _arrow(ax, (1.8, 2.0), (2.8, 2.0))
    _arrow(ax, (4.1, 3.5), (4.1, 2.5), "", (0, 0))
    _box(ax, 6.4, 3.5, 2.4, 1.0, "short bank\n+ long bank", COLORS["memory"], 8)
    _box(ax, 6.4, 1.5, 2.4, 1.0, r"read: $m_t$ = attention" + "\n" + r"of $q_t$ over both banks", COLORS["memory"], 8)
    _arrow(ax, (5.4, 4.0), (6.4, 2.3), r"$q_t$", offset=(-0.2, 0.0))
    _arrow(ax, (7.6, 3.5), (7.6, 2.5))
    _box(ax, 9.8, 1.5, 2.0, 1.0, r"$u_t = x_t + h_t + m_t$" + "\n+ FFN", COLORS["output"], 8)
    _arrow(ax, (8.8, 2.0), (9.8, 2.0))
    _arrow(ax, (5.4, 1.7), (9.8, 1.7))
    _arrow(ax, (4.1, 1.5), (7.6, 0.6))
    ax.text(7.8, 0.3, r"write $(h_t, h_t)$ to the short bank, $(k_t, v_t)$ to the long bank, after the read",
            ha="center", fontsize=8)
    return ax
