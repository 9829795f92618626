"""pactmerge.datamodules"""
