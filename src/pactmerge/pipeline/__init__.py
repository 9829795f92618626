"""pactmerge.pipeline: model loading, frozen heads, the ``CLIPFineTuner``, training modes,
evaluation, and the study orchestration (``Study``) behind ``pactmerge run``.

Import what you need from the submodules (``pactmerge.pipeline.model``, ``.heads``,
``.finetuner``, ``.training``, ``.evaluate``, ``.run``); nothing heavy happens at import time.
"""
