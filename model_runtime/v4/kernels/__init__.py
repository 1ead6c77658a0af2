"""Fused kernels of the V4 runtime (Triton), each beside its naive reference path."""
