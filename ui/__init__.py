"""deepscout.ui"""
