"""Model definitions run by the embedded runtime."""
