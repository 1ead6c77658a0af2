"""The shared text utilities: word terms and stopwords, reciprocal-rank fusion."""

from __future__ import annotations

from deepscout.text.fusion import RRF_K, reciprocal_rank_fusion
from deepscout.text.terms import BASIC_STOPWORDS, STOPWORDS, WORD, terms


def test_terms_drop_basic_stopwords_single_characters_and_punctuation() -> None:
    assert terms("Who wrote *Dracula*, the 1897 novel? A_b") == ["wrote", "dracula", "1897", "novel"]


def test_the_basic_stopwords_are_part_of_the_full_list() -> None:
    assert BASIC_STOPWORDS < STOPWORDS
    assert {"the", "who", "with"} <= BASIC_STOPWORDS and {"about", "would"} <= STOPWORDS - BASIC_STOPWORDS
    assert WORD.findall("Alû's x_y") == ["Alû", "s", "x", "y"]


def test_fusion_adds_reciprocal_ranks_across_rankings() -> None:
    bm25 = ["a", "b", "c"]
    dense = ["c", "a", "d"]
    ranked = [(key, rank) for ranking in (bm25, dense) for rank, key in enumerate(ranking, start=1)]
    fused = reciprocal_rank_fusion(ranked)
    assert [key for key, _ in fused] == ["a", "c", "b", "d"]
    assert fused[0][1] == 1 / (RRF_K + 1) + 1 / (RRF_K + 2)


def test_fusion_ties_keep_the_order_first_seen() -> None:
    assert [key for key, _ in reciprocal_rank_fusion([("x", 1), ("y", 1)], k=1)] == ["x", "y"]
