"""pactmerge.pipeline: model loading, frozen heads, the ``CLIPFineTuner``, training modes,
evaluation, and the study behind ``pactmerge run``: ``context`` (``RunContext``), ``stages``,
``merge_stage`` and ``study`` (see docs/architecture.md).

Import what you need from the submodules; nothing heavy happens at import time.
"""
