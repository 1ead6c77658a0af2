"""deepscout.model_runtime"""
