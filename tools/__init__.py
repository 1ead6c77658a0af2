"""deepscout.tools"""
