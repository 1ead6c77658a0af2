"""The decode graphs' block-table widths (few shapes per doubling of the context, little padding) and their
parts (every layer once, in order, the first alone)."""

from __future__ import annotations

from deepscout.model_runtime.v4.engine.decode_runner import LAYERS_PER_GRAPH, bucket_width, graph_parts


def test_widths_cover_the_blocks_with_at_most_an_eighth_of_an_octave_of_padding() -> None:
    for blocks in range(1, 20_000):
        width = bucket_width(blocks)
        assert blocks <= width <= max(blocks * 9 // 8 + 1, 8 * -(-blocks // 8))
        assert bucket_width(width) == width


def test_eight_widths_per_doubling() -> None:
    for octave in range(7, 14):
        widths = {bucket_width(b) for b in range((1 << octave) + 1, (1 << (octave + 1)) + 1)}
        assert len(widths) == 8
    assert bucket_width(8193) == 9216  # 1M tokens + 1 (128-token blocks): not 16,384


def test_parts_cover_the_layers_in_order_the_first_alone() -> None:
    for n_layers in range(1, 50):
        parts = graph_parts(n_layers)
        assert [layer for part in parts for layer in part] == list(range(n_layers))
        assert len(parts[0]) == 1
        assert all(1 <= len(part) <= LAYERS_PER_GRAPH for part in parts)
