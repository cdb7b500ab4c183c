"""The diagrams draw what they claim: the mask picture is the mask, the sequence picture has its segments."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mac_minimal import diagrams  # noqa: E402
from mac_minimal.mac_attention import mac_mask  # noqa: E402


def test_attention_mask_picture_is_the_mask():
    mask = mac_mask(5, 0, 2)
    ax = diagrams.attention_mask(mask, num_persistent=2, retrieved=5)
    (image,) = ax.get_images()
    assert np.array_equal(np.asarray(image.get_array()), mask.int().numpy())
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[:3] == ["p0", "p1", "h0"] and labels[-1] == "S4"
    plt.close("all")


@pytest.mark.parametrize("n,segment_len,chunk_size", [(32, 8, 4), (20, 8, 3)])
def test_segments_and_chunks_draws_every_segment(n, segment_len, chunk_size):
    ax = diagrams.segments_and_chunks(n, segment_len, chunk_size)
    titles = [t.get_text() for t in ax.texts if t.get_text().startswith("segment ")]
    assert titles == [f"segment {i + 1}" for i in range(-(-n // segment_len))]
    plt.close("all")


@pytest.mark.parametrize("draw", [diagrams.mac_block, diagrams.mmrec_step, diagrams.memory_cycle,
                                  diagrams.neural_memory_cycle, diagrams.dual_form])
def test_block_diagrams_draw_boxes_and_arrows(draw):
    ax = draw()
    assert len(ax.patches) >= 6 and len(ax.texts) >= 6
    plt.close("all")


def test_persistent_layout_picture_is_the_mask_with_rotary_positions():
    from mac_minimal.persistent import causal_mask_with_prefix

    mask = causal_mask_with_prefix(5, 3)
    ax = diagrams.persistent_layout(mask, num_persistent=3)
    (image,) = ax.get_images()
    assert np.array_equal(np.asarray(image.get_array()), mask.int().numpy())
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[:3] == ["p0\n(0)", "p1\n(0)", "p2\n(0)"]   # every slot at position 0
    assert labels[3:] == [f"S{j}\n({j})" for j in range(5)]
    plt.close("all")


def _texts(ax):
    return " ".join(t.get_text() for t in ax.texts)


def test_diagrams_carry_the_terms_of_their_equations():
    # eq. (2.1) has the gate bias b_g; eq. (25) the learned scale s on the memory term
    assert "b_g" in _texts(diagrams.mmrec_step())
    assert r"s\,\mathcal{M}^*_t(y)" in _texts(diagrams.mac_block())
    # chapter 1: the write (1.1), the read (1.3), the rate r of each bank
    text = _texts(diagrams.memory_cycle())
    assert "(1.1)" in text and "(1.3)" in text and "r = 1" in text and "r < 1" in text
    # chapter 4: every equation of the write and the read
    text = _texts(diagrams.neural_memory_cycle())
    assert all(f"({n})" in text for n in (11, 12, 13, 14, 15))
    plt.close("all")


def test_dual_form_draws_a_causal_c_by_c_matrix():
    ax = diagrams.dual_form(c=5)
    cells = [p for p in ax.patches if isinstance(p, plt.Rectangle) and p.get_width() == 0.6]
    filled = [p for p in cells if p.get_facecolor()[:3] != (1.0, 1.0, 1.0)]
    assert len(cells) == 25 and len(filled) == 15      # s <= t: the lower triangle
    plt.close("all")


@pytest.mark.parametrize("draw", [
    diagrams.mac_block, diagrams.mmrec_step, diagrams.memory_cycle, diagrams.neural_memory_cycle,
    diagrams.dual_form, lambda: diagrams.segments_and_chunks(32, 8, 4),
    lambda: diagrams.persistent_layout(mac_mask(6, 0, 0)[:, :9], 3),
    lambda: diagrams.attention_mask(mac_mask(5, 0, 2), num_persistent=2, retrieved=5),
    diagrams.recall_stream,
])
def test_diagrams_are_readable_at_column_width(draw):
    """Smallest text >= 9 px once the book's 672 px column shows the figure (1,280 px window)."""
    ax = draw()
    assert diagrams.smallest_text_px(ax.figure) >= 9
    plt.close("all")


def test_smallest_text_px_counts_the_shrinking():
    fig, ax = plt.subplots(figsize=(6.0, 2))          # narrower than the column: not shrunk
    ax.tick_params(labelsize=18)
    assert abs(diagrams.smallest_text_px(fig) - 18 * 100 / 72) < 1e-6
    fig.set_size_inches(13.44, 2)                        # wider than the column: shrunk to it
    renderer = fig.canvas.get_renderer()
    width_px = fig.get_tightbbox(renderer).width * 100
    assert width_px > 1000
    assert abs(diagrams.smallest_text_px(fig) - 18 * 100 / 72 * 672 / width_px) < 1e-6
    plt.close("all")


@pytest.mark.parametrize("seq_len,distance,segment_len", [(64, 32, 8), (20, 8, 6), (64, 60, 8), (12, 4, 4)])
def test_recall_stream_puts_every_token_kind_where_recall_batch_does(seq_len, distance, segment_len):
    from mac_minimal.data import KEY, QUERY, VALUE, RecallTask, recall_batch

    task = RecallTask(num_keys=8, num_values=8, num_filler=8)
    batch = recall_batch(3, seq_len, distance, 1, torch.Generator().manual_seed(0), task)
    stream = torch.cat((batch.inputs, batch.targets[:, -1:]), dim=1)      # (b, n + 1): inputs + answer
    layout = diagrams.recall_layout(seq_len, distance)
    assert len(layout) == seq_len + 1
    fact = [t for t, (kind, _) in enumerate(layout) if kind == "fact"]
    question = [t for t, (kind, _) in enumerate(layout) if kind in ("question", "answer")]
    assert question[0] - fact[0] == distance and question[-1] == seq_len
    for t, (kind, label) in enumerate(layout):
        column = stream[:, t]
        if kind == "filler":
            assert bool((column >= task.filler_start).all())
        elif label in ("KEY", "QUERY", "VALUE"):
            assert bool((column == {"KEY": KEY, "QUERY": QUERY, "VALUE": VALUE}[label]).all())
    assert torch.equal(stream[:, fact[1]], stream[:, question[1]])         # the question asks the fact's key
    assert torch.equal(stream[:, fact[3]], stream[:, seq_len])             # the answer is the fact's value
    assert bool(batch.mask[:, -1].all())                                    # the last target is the answer
    # the picture: one box per position, gid "<kind> <position>", coloured by kind
    ax = diagrams.recall_stream(seq_len=seq_len, distance=distance, segment_len=segment_len)
    boxes = {p.get_gid(): p for p in ax.patches if p.get_gid()}
    assert sorted(boxes, key=lambda g: int(g.split()[1])) == [f"{k} {t}" for t, (k, _) in enumerate(layout)]
    for gid, box in boxes.items():
        assert matplotlib.colors.to_hex(box.get_facecolor()) == diagrams.RECALL_COLORS[gid.split()[0]]
    text = _texts(ax)
    assert all(label in text for label in ("KEY", "VALUE", "QUERY", "fact", "question", "answer"))
    assert f"distance = {distance} tokens" in text
    numbers = [t.get_text() for t in ax.texts if t.get_text().isdigit()]
    assert numbers[0] == "1" and len(numbers) <= -(-seq_len // segment_len)
    assert diagrams.smallest_text_px(ax.figure) >= 9
    plt.close("all")


def test_recall_layout_refuses_a_distance_outside_the_stream():
    with pytest.raises(ValueError, match="distance must lie in"):
        diagrams.recall_layout(16, 15)
    with pytest.raises(ValueError, match="segment_len"):
        diagrams.recall_stream(segment_len=0)


def _titans_layers():
    from mac_minimal.mac_attention import MACAttention, MACAttentionConfig
    from mac_minimal.mag import MAGLayer, MAGLayerConfig
    from mac_minimal.mal import MALLayer, MALLayerConfig
    from mac_minimal.neural_memory import NeuralMemoryConfig

    memory = NeuralMemoryConfig(chunk_size=4)
    return {"mac": MACAttention(MACAttentionConfig(dim=16, heads=2, segment_len=6, num_persistent=3, memory=memory)),
            "mag": MAGLayer(MAGLayerConfig(dim=16, heads=2, window=5, num_persistent=3, memory=memory)),
            "mal": MALLayer(MALLayerConfig(dim=16, heads=2, window=5, num_persistent=3, memory=memory)),
            "swa": MAGLayer(MAGLayerConfig(dim=16, heads=2, window=5, num_persistent=3, use_memory=False)),
            "mac_no_memory": MACAttention(MACAttentionConfig(dim=16, heads=2, segment_len=6, use_memory=False))}


def test_titans_layer_draws_each_variants_wiring_from_its_module():
    """MAG: attention and memory side by side into a gate; MAL: memory, then attention; MAC: the
    memory feeds the attention, which writes back; without memory: the attention alone. Every edge
    is one arrow between the boxes it names; the boxes carry the layer's own sizes and equations."""
    wiring = {"mag": {("input", "attention"), ("input", "memory"), ("attention", "combine"),
                      ("memory", "combine"), ("combine", "output")},
              "mal": {("input", "memory"), ("memory", "attention"), ("attention", "output")},
              "mac": {("input", "memory"), ("memory", "attention"), ("input", "attention"),
                      ("attention", "memory"), ("attention", "combine"), ("memory", "combine"),
                      ("combine", "output")},
              "swa": {("input", "attention"), ("attention", "output")},
              "mac_no_memory": {("input", "attention"), ("attention", "output")}}
    equations = {"mag": (26, 27, 28), "mal": (29, 30, 31), "mac": (21, 22, 23, 24, 25), "swa": (26, 27),
                 "mac_no_memory": (22,)}
    sizes = {"mag": ("window 5", "chunk 4", "3 persistent"), "mal": ("window 5", "chunk 4", "3 persistent"),
             "mac": ("6 tokens", "chunk 4", "3 $p$"), "swa": ("window 5", "3 persistent"),
             "mac_no_memory": ("6 tokens",)}
    for name, layer in _titans_layers().items():
        edges = {(s, t) for s, t, _ in diagrams.titans_layer_edges(layer)}
        assert edges == wiring[name], name
        ax = diagrams.titans_layer(layer)
        arrows = {t.get_gid() for t in ax.texts if t.get_gid()}
        assert arrows == {f"{s} -> {t}" for s, t in edges}, name
        boxes = {p.get_gid() for p in ax.patches if p.get_gid()}
        assert boxes == {part for edge in edges for part in edge}, name
        text = _texts(ax) + ax.get_title()
        assert all(f"({n})" in text or f"{n}-" in text or f"-{n}" in text for n in equations[name]), name
        assert all(size in text for size in sizes[name]), (name, text)
        assert diagrams.smallest_text_px(ax.figure) >= 9
        plt.close("all")


def test_titans_layer_refuses_other_modules():
    with pytest.raises(TypeError, match="MACAttention, MAGLayer or MALLayer"):
        diagrams.titans_layer(torch.nn.Linear(2, 2))
