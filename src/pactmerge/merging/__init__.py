"""pactmerge.merging"""
