"""The diagrams draw what they claim: the mask picture is the mask, the sequence picture has its segments."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

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


@pytest.mark.parametrize("draw", [diagrams.mac_block, diagrams.mmrec_step])
def test_block_diagrams_draw_boxes_and_arrows(draw):
    ax = draw()
    assert len(ax.patches) >= 6 and len(ax.texts) >= 6
    plt.close("all")
