"""deepscout.agent"""
