"""The decode graphs' block-table widths: few shapes per doubling of the context, little padding."""

from __future__ import annotations

from deepscout.model_runtime.v4.engine.decode_runner import bucket_width


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
