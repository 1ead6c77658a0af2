"""DeepSeek-V4 inference engine over a heterogeneous paged KV cache (see `engine.py` for the API)."""
