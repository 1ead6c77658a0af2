"""Reading DeepSeek-V4 checkpoints: safetensors streaming, FP8/MXFP4 formats, checkpoint errors."""
