"""deepscout.evals"""
