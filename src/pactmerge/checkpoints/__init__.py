"""pactmerge.checkpoints"""
