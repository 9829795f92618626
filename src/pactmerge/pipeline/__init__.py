"""pactmerge.pipeline"""
