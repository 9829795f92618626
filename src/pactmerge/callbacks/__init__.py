"""pactmerge.callbacks"""
