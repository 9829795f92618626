"""Small synthetic encoders (``fixtures.tiny_encoder``): open_clip-style key names, tiny shapes,
low-rank-plus-noise updates."""

import pytest
from fixtures import finetune, tiny_encoder


@pytest.fixture
def models():
    pre = tiny_encoder()
    return pre, [finetune(pre, t) for t in range(3)]


@pytest.fixture
def make_models():
    """make_models(width, layers, T) -> (pre, [ft_1..ft_T])."""

    def make(width: int = 12, layers: int = 2, T: int = 3):
        pre = tiny_encoder(width=width, layers=layers)
        return pre, [finetune(pre, t) for t in range(T)]

    return make
