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
* :func:`memory_cycle` (chapter 1): a memory is a state, a write rule and a read rule (eqs. (1.1), (1.3)).
* :func:`neural_memory_cycle` (chapter 4): the neural memory's write (the paper's eqs. (11)-(14)) and
  read (eq. (15)).
* :func:`dual_form` (chapter 4): one chunk of the dual form, eq. (4.2): reads from the chunk's first
  weights and a c x c matrix, only the chunk-end weights built.
* :func:`persistent_layout` (chapter 5): the causal mask over ``[p | S]`` with the slots' rotary
  positions (position 0 in mode "kv").
* :func:`recall_stream` (chapter 8): one stream of the recall task, filler, the fact, the question
  and its answer, with the segments and the distance (the layout: :func:`recall_layout`).
* :func:`titans_layer` (chapter 9): one layer of MAC, MAG or MAL (or of its memory-free form) as
  a data flow, read from the layer module itself: which parts it has, how they are wired, its
  window, segment, chunk and persistent tokens (the wiring: :func:`titans_layer_edges`).

Every diagram is sized so that its smallest text stays at least 9 px when the book's column
(:data:`COLUMN_PX`) shows it (:func:`smallest_text_px`).
"""

from torch import nn

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyBboxPatch, Patch
from matplotlib.text import Text
from torch import Tensor

from mac_minimal.checks import require_positive_int
from mac_minimal.data import TOKENS_PER_FACT, recall_distance_range

COLORS = {"persistent": "#c7c7c7", "retrieved": "#9ecae1", "segment": "#fdd0a2", "memory": "#c7e9c0",
          "output": "#fcbba1"}
COLUMN_PX = 672   # px: the width of the book's content column at a 1,280 px window
SAVE_DPI = 100    # the notebooks' figures are saved at matplotlib's default dpi


def smallest_text_px(fig: Figure, column_px: int = COLUMN_PX, dpi: float = SAVE_DPI) -> float:
    """The size in px of the figure's smallest visible text as the book shows it: saved at ``dpi``
    with a tight bounding box, then shrunk to ``column_px`` if it is wider."""
    renderer = fig.canvas.get_renderer()
    width_px = fig.get_tightbbox(renderer).width * dpi
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    return min(sizes) * dpi / 72 * min(1.0, column_px / width_px)


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
    ax = _canvas(ax, 13.2, 5.6, (10, 4.3))
    ax.set_ylim(-0.4, 5.6)
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
    _box(ax, 10.6, 0.4, 2.4, 1.0, "combine (25)\n" + r"$o = y \otimes s\,\mathcal{M}^*_t(y)$", COLORS["output"], 8)
    ax.text(11.8, 0.2, r"$s$: a learned scale, 0 at the start" + "\n" + r"($s = 1$: eq. (25) as written)",
            ha="center", va="top", fontsize=8)
    _arrow(ax, (10.6, 1.9), (11.6, 1.4))
    _arrow(ax, (7.8, 0.8), (10.6, 0.8))
    ax.text(6.7, 0.1, r"$\mathcal{M}_t$ is the next segment's $\mathcal{M}_{t-1}$", ha="center", fontsize=8)
    return ax


def _cell_borders(ax: Axes, rows: int, cols: int) -> None:
    """Thin grey lines between the cells of a (rows, cols) mask drawn with imshow."""
    ax.set_xticks([c - 0.5 for c in range(cols + 1)], minor=True)
    ax.set_yticks([r - 0.5 for r in range(rows + 1)], minor=True)
    ax.grid(which="minor", color="#999999", lw=0.4)
    ax.tick_params(which="minor", length=0)


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
    _cell_borders(ax, rows, cols)
    ax.set_xlabel("keys: persistent | retrieved h | segment S (black: may attend)", fontsize=8)
    return ax


def segments_and_chunks(n: int, segment_len: int, chunk_size: int, ax: Axes | None = None) -> Axes:
    """``n`` tokens cut into attention segments (coloured bands) and memory chunks (the row below).

    Attention stays inside a segment; the memory is written chunk by chunk and carried across
    segment boundaries (arrows).
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(6.7, 2.4))
    ax.set_xlim(-6.5, n + 0.5)
    ax.set_ylim(-0.2, 4.6)
    ax.axis("off")
    for start in range(0, n, segment_len):
        width = min(segment_len, n - start)
        ax.add_patch(plt.Rectangle((start, 2.4), width, 1.0, facecolor=COLORS["segment"], edgecolor="black"))
        ax.text(start + width / 2, 3.6, f"segment {start // segment_len + 1}", ha="center", va="bottom",
                fontsize=9)
        if start + segment_len < n:
            ax.annotate("", xy=(start + segment_len + 1.6, 0.75), xytext=(start + segment_len - 1.6, 0.75),
                        arrowprops=dict(arrowstyle="-|>", color="tab:green", lw=1.5))
    for t in range(n):
        ax.add_patch(plt.Rectangle((t + 0.12, 2.55), 0.76, 0.7, facecolor="white", edgecolor="#888888", lw=0.5))
    for start in range(0, n, chunk_size):
        width = min(chunk_size, n - start)
        ax.add_patch(plt.Rectangle((start, 1.3), width, 0.7, facecolor=COLORS["memory"], edgecolor="black",
                                   lw=0.6))
    ax.text(-0.5, 2.9, f"tokens\n(segments of {segment_len})", ha="right", va="center", fontsize=9)
    ax.text(-0.5, 1.65, f"memory chunks\n(of {chunk_size})", ha="right", va="center", fontsize=9)
    ax.text(-0.5, 0.75, "memory carried", ha="right", va="center", fontsize=9, color="tab:green")
    return ax


def memory_cycle(ax: Axes | None = None) -> Axes:
    """Chapter 1's memory: a state (two banks of slots), a write rule (eq. (1.1)), a read rule (eq. (1.3))."""
    ax = _canvas(ax, 13.0, 6.0, (6.7, 3.1))
    _box(ax, 0.1, 3.9, 2.6, 1.2, "step $t$:\nkey $k_t$, value $v_t$", COLORS["segment"])
    _box(ax, 3.4, 3.7, 3.4, 1.6, "write (1.1)\nslot $t$ mod $s$ $\\leftarrow$\n$(1-r)\\,$slot$ + r\\,(k_t, v_t)$",
         COLORS["output"])
    _arrow(ax, (2.7, 4.5), (3.4, 4.5))
    # the state: two banks of slots
    ax.text(10.2, 5.55, "state: two banks of slots", ha="center", va="bottom", fontsize=9)
    for row, (name, slots, r) in enumerate([("short", 8, "$r = 1$"), ("long", 4, "$r < 1$")]):
        y = 4.6 - 1.1 * row
        for i in range(slots):
            ax.add_patch(plt.Rectangle((7.7 + 0.5 * i, y), 0.5, 0.7, facecolor=COLORS["memory"], edgecolor="black",
                                       lw=0.6))
        ax.text(7.7 + 0.5 * slots + 0.15, y + 0.35, f"{name}, {r}", ha="left", va="center", fontsize=9)
    _arrow(ax, (6.8, 4.5), (7.65, 4.9))
    _arrow(ax, (6.8, 4.3), (7.65, 3.85))
    _box(ax, 0.1, 0.5, 2.6, 1.2, "query $q$", COLORS["retrieved"])
    _box(ax, 3.4, 0.3, 4.6, 1.6, "read (1.3)\n" + r"$\mathrm{softmax}(q K^\top / \sqrt{d})\, V$", COLORS["retrieved"])
    _arrow(ax, (2.7, 1.1), (3.4, 1.1))
    _arrow(ax, (9.5, 3.4), (7.2, 1.95), "keys $K$, values $V$", offset=(1.6, -0.1))
    _box(ax, 9.6, 0.5, 3.2, 1.2, "what the\nmemory returns", COLORS["output"])
    _arrow(ax, (8.0, 1.1), (9.6, 1.1))
    return ax


def neural_memory_cycle(ax: Axes | None = None) -> Axes:
    """Chapter 4's memory: the state is an MLP's weights; a write is one gradient step with momentum and
    forgetting (the paper's eqs. (11)-(14)); a read is a forward pass (eq. (15))."""
    ax = _canvas(ax, 13.0, 7.0, (6.7, 3.6))
    _box(ax, 0.1, 5.2, 2.1, 1.2, "token $x_t$", COLORS["segment"])
    _box(ax, 2.7, 5.0, 3.9, 1.6, "(11) $k_t = x_t W_K$\n$v_t = x_t W_V$", COLORS["persistent"])
    _arrow(ax, (2.2, 5.8), (2.7, 5.8))
    _box(ax, 7.2, 4.9, 5.7, 1.8, "(12) loss $\\|\\mathcal{M}_{t-1}(k_t) - v_t\\|^2$\n"
         "gradient $\\nabla\\ell$ at the weights $\\mathcal{M}_{t-1}$", COLORS["output"])
    _arrow(ax, (6.6, 5.8), (7.2, 5.8))
    _box(ax, 7.2, 2.3, 5.7, 1.8, "(14) $S_t = \\eta_t S_{t-1} - \\theta_t \\nabla\\ell$\n"
         "(13) $\\mathcal{M}_t = (1 - \\alpha_t)\\,\\mathcal{M}_{t-1} + S_t$", COLORS["output"])
    _arrow(ax, (10.05, 4.9), (10.05, 4.1), "write", offset=(0.55, -0.2))
    _box(ax, 2.7, 2.3, 3.9, 1.8, "state: the MLP's\nweights $\\mathcal{M}_t$\n+ momentum $S_t$", COLORS["memory"])
    _arrow(ax, (7.2, 3.2), (6.6, 3.2))
    _box(ax, 0.1, 0.1, 2.1, 1.2, "query $q_t$", COLORS["retrieved"])
    _box(ax, 2.7, 0.1, 3.9, 1.2, "(15) read:\n$y_t = \\mathcal{M}^*(q_t)$", COLORS["retrieved"])
    _arrow(ax, (2.2, 0.7), (2.7, 0.7))
    _arrow(ax, (4.65, 2.3), (4.65, 1.3))
    ax.text(7.2, 0.7, "a forward pass with the weights,\nno update", ha="left", va="center", fontsize=9)
    return ax


def dual_form(c: int = 4, ax: Axes | None = None) -> Axes:
    """One chunk of ``c`` tokens in the dual form (chapter 4, eq. (4.2)): every gradient at the chunk's
    first weights as a few vectors, a causal c x c matrix C mixing them, reads that never build the
    per-token weights, and only the chunk-end weights built."""
    ax = _canvas(ax, 13.0, 7.6, (6.7, 3.9))
    _box(ax, 0.1, 5.4, 3.4, 1.4, "chunk's first weights\n$\\mathcal{M}_{\\mathrm{prev}}$, $S_{\\mathrm{prev}}$",
         COLORS["memory"])
    _box(ax, 4.1, 5.4, 4.1, 1.4, f"{c} gradients $G_s$ at\n" + "$\\mathcal{M}_{\\mathrm{prev}}$: vectors (4.1)",
         COLORS["output"])
    _arrow(ax, (3.5, 6.1), (4.1, 6.1))
    # the c x c matrix C: lower-triangular
    x0, y0, cell = 9.4, 4.3, 0.6
    for t in range(c):
        for s_ in range(c):
            ax.add_patch(plt.Rectangle((x0 + cell * s_, y0 + cell * (c - 1 - t)), cell, cell,
                                       facecolor=COLORS["retrieved"] if s_ <= t else "white", edgecolor="black",
                                       lw=0.5))
    ax.text(x0 + cell * c / 2, y0 + cell * c + 0.1, f"$C$ ({c} x {c}), $s \\leq t$:\nmomentum, forgetting",
            ha="center", va="bottom", fontsize=9)
    _arrow(ax, (8.2, 6.1), (9.35, 5.8))
    _box(ax, 0.1, 0.4, 6.2, 2.3, "reads $\\mathcal{M}_t(q_t)$ for every $t$:\n"
         "$\\mathcal{M}_{\\mathrm{prev}}(q_t)$ + attention-like\nsums $\\sum_s C_{ts}\\,(k_s^\\top q_t)\\ldots$",
         COLORS["retrieved"])
    _arrow(ax, (1.7, 5.4), (1.7, 2.7))
    _arrow(ax, (9.4, 4.3), (6.3, 2.0))
    _box(ax, 7.2, 0.4, 5.7, 2.3, "chunk-end weights only\n(last row of $C$): the\nnext chunk's $\\mathcal{M}_{\\mathrm{prev}}$",
         COLORS["memory"])
    _arrow(ax, (11.0, 4.3), (11.0, 2.7))
    return ax


def persistent_layout(mask: Tensor, num_persistent: int, ax: Axes | None = None) -> Axes:
    """A (queries, keys) mask over ``[p | S]`` (chapter 5) as black (may attend) and white cells, each key
    labelled with its rotary position: 0 for every slot (mode "kv": slots are never rotated), j for S."""
    rows, cols = mask.shape
    n_seq = cols - num_persistent
    if ax is None:
        _, ax = plt.subplots(figsize=(0.45 * cols + 1.6, 0.4 * rows + 1.3))
    ax.imshow(mask.int().numpy(), cmap="Greys", vmin=0, vmax=1)
    labels = [f"p{i}\n(0)" for i in range(num_persistent)] + [f"S{j}\n({j})" for j in range(n_seq)]
    ax.set_xticks(range(cols), labels, fontsize=9)
    ax.set_yticks(range(rows), [f"query {i}" for i in range(rows)], fontsize=9)
    ax.axvline(num_persistent - 0.5, color="tab:red", lw=2)
    _cell_borders(ax, rows, cols)
    ax.set_xlabel("keys: slots | sequence (rotary position); black: may attend", fontsize=9)
    ax.xaxis.set_label_position("top")
    return ax


def mmrec_step(ax: Axes | None = None) -> Axes:
    """One MM-Rec step (chapter 2): the gated recurrence and the read of both memory banks."""
    ax = _canvas(ax, 12.0, 5.0, (9, 3.8))
    _box(ax, 0.2, 3.6, 1.6, 0.8, r"$x_t$", COLORS["segment"])
    _box(ax, 0.2, 1.6, 1.6, 0.8, r"$h_{t-1}$", COLORS["retrieved"])
    _box(ax, 2.8, 3.5, 2.6, 1.0, r"project: $q, k, v, z$," + "\n" + r"decay $\gamma_t$", COLORS["persistent"], 8)
    _arrow(ax, (1.8, 4.0), (2.8, 4.0))
    _box(ax, 2.8, 1.5, 2.6, 1.0, r"$h_t = z_t \odot \sigma(W_g h_{t-1} + b_g)$" + "\n" + r"$+\, \gamma_t \odot h_{t-1}$  (2.1)",
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


RECALL_COLORS = {"filler": "#f0f0f0", "fact": COLORS["retrieved"], "question": COLORS["segment"],
                 "answer": COLORS["output"]}


def recall_layout(seq_len: int, distance: int) -> list[tuple[str, str]]:
    """``(kind, label)`` of every position of one recall stream with one fact (chapter 8), the
    ``seq_len`` inputs of :func:`mac_minimal.data.recall_batch` and then the answer (the target of
    the last input), ``seq_len + 1`` entries: kind ``"filler"`` (label ""), ``"fact"`` (``KEY``,
    ``k``, ``VALUE``, ``v``), ``"question"`` (``QUERY``, ``k``, ``VALUE``) or ``"answer"`` (``v``).
    The question is the last three inputs and starts ``distance`` tokens after the fact."""
    low, high = recall_distance_range(seq_len, 1)
    if not low <= distance <= high:
        raise ValueError(f"distance must lie in [{low}, {high}] for seq_len={seq_len}, got {distance}")
    layout = [("filler", "")] * (seq_len + 1)
    question = seq_len + 1 - TOKENS_PER_FACT          # data.recall_batch's query_start (one fact)
    fact = question - distance
    layout[fact:fact + TOKENS_PER_FACT] = [("fact", label) for label in ("KEY", "k", "VALUE", "v")]
    layout[question:] = [("question", "QUERY"), ("question", "k"), ("question", "VALUE"), ("answer", "v")]
    return layout


def _fanned_labels(ax: Axes, labels: list[tuple[int, str]], title: str, n: int) -> None:
    """Label the tokens ``labels`` ((position, text), left to right) in one row above the strip,
    spread to their measured widths around the group's centre (kept inside ``[0, n]``), each joined
    to its box by a line; ``title`` above the row."""
    renderer = ax.figure.canvas.get_renderer()
    to_data = ax.transData.inverted()
    texts = [ax.text(0, 2.3, text, ha="center", va="bottom", fontsize=9) for _, text in labels]
    widths = []
    for t in texts:
        box = t.get_window_extent(renderer)
        widths.append(to_data.transform((box.x1, 0))[0] - to_data.transform((box.x0, 0))[0])
    gap = 0.8
    total = sum(widths) + gap * (len(widths) - 1)
    left = (labels[0][0] + labels[-1][0] + 1) / 2 - total / 2
    left = min(max(left, 0.0), n - total)
    for (position, _), text, width in zip(labels, texts, widths):
        text.set_x(left + width / 2)
        ax.plot([left + width / 2, position + 0.5], [2.25, 1.05], color="black", lw=0.5)
        left += width + gap
    ax.text(text.get_position()[0] / 2 + texts[0].get_position()[0] / 2, 3.3, title, ha="center",
            va="bottom", fontsize=9, style="italic")


def recall_stream(ax: Axes | None = None, seq_len: int = 64, distance: int = 32, segment_len: int = 8) -> Axes:
    """One stream of the recall task (chapter 8, :func:`mac_minimal.data.recall_batch` with one fact)
    as a strip of token boxes coloured by kind (:func:`recall_layout`), the fact and the question
    labelled above their tokens, the segments of ``segment_len`` tokens below (MAC attends inside
    one; only the neural memory carries the fact across), and the ``distance`` from the fact's start
    to the question's start. Each token box has the gid ``"<kind> <position>"``."""
    require_positive_int("segment_len", segment_len)
    layout = recall_layout(seq_len, distance)
    n = len(layout)                                   # seq_len inputs + the answer
    if ax is None:
        fig, ax = plt.subplots(figsize=(7.5, 2.6))
        fig.subplots_adjust(left=0.1, right=0.99, bottom=0.02, top=0.98)
    ax.set_xlim(-0.5, n + 0.5)
    ax.set_ylim(-2.9, 5.0)
    ax.axis("off")
    for t, (kind, _) in enumerate(layout):
        box = plt.Rectangle((t + 0.06, 0), 0.88, 1.0, facecolor=RECALL_COLORS[kind],
                            edgecolor="black" if kind != "filler" else "#999999",
                            lw=0.5, ls="--" if kind == "answer" else "-")
        box.set_gid(f"{kind} {t}")
        ax.add_patch(box)
    fact = next(t for t, (kind, _) in enumerate(layout) if kind == "fact")
    question = next(t for t, (kind, _) in enumerate(layout) if kind == "question")
    for name, first in (("fact", fact), ("question", question)):
        _fanned_labels(ax, [(t, label) for t, (_, label) in enumerate(layout) if label and
                            first <= t < first + TOKENS_PER_FACT], name, n)
    ax.text(n - 0.5, -0.15, "answer\n(target)", ha="center", va="top", fontsize=9)
    # segments: boundaries every segment_len inputs, numbered below
    for start in range(0, seq_len, segment_len):
        end = min(seq_len, start + segment_len)
        ax.plot([start, start], [-0.25, 1.25], color="tab:red", lw=1.2)
        number = start // segment_len + 1
        if end - start > len(str(number)):            # room for the number (about a token per digit)
            ax.text((start + end) / 2, -0.2, str(number), ha="center", va="top", fontsize=9)
    ax.plot([seq_len, seq_len], [-0.25, 1.25], color="tab:red", lw=1.2)
    ax.text(-0.7, 0.5, "tokens", ha="right", va="center", fontsize=9)
    ax.text(-0.7, -0.75, "segment", ha="right", va="center", fontsize=9, color="tab:red")
    # the distance: fact start -> question start
    ax.annotate("", xy=(question, -1.9), xytext=(fact, -1.9),
                arrowprops=dict(arrowstyle="<|-|>", color="black", lw=0.9, shrinkA=0, shrinkB=0))
    for x in (fact, question):
        ax.plot([x, x], [-2.2, -0.05], color="black", lw=0.6, ls=":")
    ax.text((fact + question) / 2, -2.1, f"distance = {distance} tokens", ha="center", va="top", fontsize=9)
    handles = [Patch(facecolor=RECALL_COLORS[k], edgecolor="black", lw=0.5, label=k) for k in RECALL_COLORS]
    handles.append(Line2D([], [], color="tab:red", lw=1.2, label=f"segment boundary ({segment_len} tokens)"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1.0), ncol=5, fontsize=9,
              frameon=False, handlelength=1.2, columnspacing=1.0)
    return ax


def titans_layer_edges(layer: nn.Module) -> list[tuple[str, str, str]]:
    """The data flow of one Titans layer as ``(source, target, label)`` edges between the parts
    ``input``, ``memory``, ``attention``, ``combine`` and ``output``, read from the module:

    * :class:`~mac_minimal.mac_attention.MACAttention` (eqs. 21-25): the memory feeds the attention
      (``h``), the attention's output is written into the memory and combined with its read;
    * :class:`~mac_minimal.mag.MAGLayer` (eqs. 26-28): attention and memory read the same input side
      by side, a gate combines them;
    * :class:`~mac_minimal.mal.MALLayer` (eqs. 29-31): the memory first, the attention on its output.

    A layer without memory (``use_memory=False``) is its attention alone.
    """
    from mac_minimal.mac_attention import MACAttention
    from mac_minimal.mag import MAGLayer
    from mac_minimal.mal import MALLayer

    if not isinstance(layer, (MACAttention, MAGLayer, MALLayer)):
        raise TypeError(f"layer must be a MACAttention, MAGLayer or MALLayer, got {type(layer).__name__}")
    if layer.memory is None:
        return [("input", "attention", "x"), ("attention", "output", "")]
    if isinstance(layer, MACAttention):
        return [("input", "memory", "q"), ("memory", "attention", "h"), ("input", "attention", "S"),
                ("attention", "memory", "write y"), ("attention", "combine", "y"),
                ("memory", "combine", r"$\mathcal{M}^*_t(y)$"), ("combine", "output", "")]
    if isinstance(layer, MAGLayer):
        return [("input", "attention", ""), ("input", "memory", ""), ("attention", "combine", "y"),
                ("memory", "combine", "m"), ("combine", "output", "")]
    return [("input", "memory", ""), ("memory", "attention", "y"), ("attention", "output", "")]


def titans_layer(layer: nn.Module, ax: Axes | None = None) -> Axes:
    """One layer of MAC, MAG or MAL as boxes and arrows, left to right (chapter 9): the input,
    the attention above, the memory below, how they combine, the output. The boxes say what the
    layer's config sets (window or segment, the memory's chunk, the persistent tokens); the
    arrows are :func:`titans_layer_edges`. Each box has the gid of its part, each arrow the gid
    ``"source -> target"``."""
    from mac_minimal.mac_attention import MACAttention
    from mac_minimal.mag import MAGLayer

    edges = titans_layer_edges(layer)
    cfg = layer.config
    memory = layer.memory is not None
    chunk = f"chunk {layer.memory.config.chunk_size}" if memory else ""
    p = cfg.num_persistent
    if isinstance(layer, MACAttention):
        name = "MAC: memory as context (eqs. 21-25)" if memory else "MAC without memory"
        parts = {"input": f"segment $S$\n({cfg.segment_len} tokens)",
                 "attention": "attend (22)-(23) over\n" + f"[{p} $p$ | $h$ | $S$]",
                 "memory": f"retrieve (21)\nwrite (24), {chunk}",
                 "combine": "(25) $o = y \\otimes$\n" + r"$s\,\mathcal{M}^*_t(y)$"}
    elif isinstance(layer, MAGLayer):
        name = "MAG: memory as a gate (eqs. 26-28)" if memory else "sliding window alone (eq. 27)"
        parts = {"input": f"(26) $[p \\,\\|\\, x]$\n{p} persistent",
                 "attention": f"(27) SW-Attn*\nwindow {cfg.window}, sees $p$",
                 "memory": f"$m_t = \\mathcal{{M}}_{{t-1}}(q_t)$\nread, write; {chunk}",
                 "combine": "(28) gate\n" + r"LN$(y)\,\sigma($LN$(m))$"}
    else:
        name = "MAL: memory as a layer (eqs. 29-31)"
        parts = {"input": f"(29) $[p \\,\\|\\, x]$\n{p} persistent",
                 "memory": f"(30) $y_t = \\mathcal{{M}}_{{t-1}}(q_t)$\nread, write; {chunk}",
                 "attention": f"(31) SW-Attn$(y)$\nwindow {cfg.window}, no $p$"}
    parts["output"] = "$o$"
    used = {part for edge in edges for part in edge[:2]}
    # (x, y, w, h) of each part; MAL is a chain, the others have attention above and memory below
    if isinstance(layer, MACAttention) or isinstance(layer, MAGLayer):
        place = {"input": (0.1, 1.5, 2.6, 1.2), "attention": (3.9, 2.9, 3.2, 1.2),
                 "memory": (3.9, 0.1, 3.2, 1.2), "combine": (8.3, 1.5, 2.9, 1.2), "output": (12.0, 1.75, 0.9, 0.7)}
        if not memory:
            place["output"] = (8.3, 3.15, 0.9, 0.7)
    else:
        place = {"input": (0.1, 1.5, 2.6, 1.2), "memory": (3.4, 1.5, 3.7, 1.2), "attention": (7.8, 1.5, 3.4, 1.2),
                 "output": (12.0, 1.75, 0.9, 0.7)}
    colors = {"input": COLORS["segment"], "attention": COLORS["output"], "memory": COLORS["memory"],
              "combine": COLORS["retrieved"], "output": COLORS["persistent"]}
    ax = _canvas(ax, 13.0, 4.2, (6.7, 2.3))
    ax.set_title(name, fontsize=10)
    for part in parts:
        if part not in used:
            continue
        x, y, w, h = place[part]
        _box(ax, x, y, w, h, parts[part], colors[part])
        ax.patches[-1].set_gid(part)

    def anchor(part: str, towards: str) -> tuple[float, float]:
        """The middle of the side of ``part``'s box that faces ``towards``'s."""
        x, y, w, h = place[part]
        tx, ty, tw, th = place[towards]
        dx, dy = (tx + tw / 2) - (x + w / 2), (ty + th / 2) - (y + h / 2)
        if abs(dx) * (h + th) >= abs(dy) * (w + tw):           # mostly beside: left or right side
            return (x + w if dx > 0 else x, y + h / 2)
        return (x + w / 2, y + h if dy > 0 else y)

    for source, target, label in edges:
        back = (target, source) in {(s_, t_) for s_, t_, _ in edges}
        start, end = anchor(source, target), anchor(target, source)
        if back:   # a pair of opposite arrows (MAC: h up, the write down): side by side
            shift = 0.55 if source == "memory" else -0.55
            start, end = (start[0] + shift, start[1]), (end[0] + shift, end[1])
        arrow = ax.annotate("", xy=end, xytext=start,
                            arrowprops=dict(arrowstyle="-|>", color="black", lw=0.9, shrinkA=2, shrinkB=2))
        arrow.set_gid(f"{source} -> {target}")
        if not label:
            continue
        (x0, y0), (x1, y1) = start, end
        if x0 == x1:               # vertical: the label beside the arrow, away from its twin
            right = source == "memory"
            ax.text(x0 + (0.12 if right else -0.12), (y0 + y1) / 2, label, ha="left" if right else "right",
                    va="center", fontsize=9, style="italic")
        elif y0 == y1:             # horizontal: above it
            ax.text((x0 + x1) / 2, y0 + 0.1, label, ha="center", va="bottom", fontsize=9, style="italic")
        else:                      # slanted: above its upper end's side, left of the middle
            ax.text((x0 + x1) / 2 - 0.15, (y0 + y1) / 2 + (0.1 if y1 > y0 else -0.1), label, ha="right",
                    va="bottom" if y1 > y0 else "top", fontsize=9, style="italic")
    return ax
