"""Parameter parsing: the SVD options' bounds, the device resolver."""

import pytest
import torch

from pactmerge.errors import MergeError
from pactmerge.merging import merge, resolve_device


@pytest.mark.parametrize(
    "params, needle",
    [
        ({"power_iters": 10**8}, "power_iters must be in"),
        ({"power_iters": -1}, "power_iters must be in"),
        ({"oversample": -2}, "oversample must be in"),
        ({"seed": 2**64}, "seed must be in"),
        ({"seed": -1}, "seed must be in"),
        ({"power_iters": "1e8"}, "parameter 'power_iters': expects an integer"),
    ],
)
def test_svd_options_are_bounded(models, params, needle):
    pre, fts = models
    with pytest.raises(MergeError, match=needle):
        merge(pre, fts, "tsvm", params={"svd": "randomized", **params})


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "gpu0", "meta"):
        with pytest.raises(MergeError, match=repr(bad)):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(MergeError, match="CUDA is not available"):
            resolve_device("cuda")
