"""deepscout.memory"""
