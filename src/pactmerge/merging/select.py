"""Exact k-th smallest magnitude over a stream of tensors (radix select on float bit patterns).

For non-negative IEEE floats the bit pattern, read as an integer, orders like the value. So
the k-th smallest ``|x|`` over many tensors is found digit by digit (16 bits per pass, from the
top): each pass histograms the next digit of the entries that match the digits found so far.
float32 needs 2 passes and float64 4; memory is one 65536-bin histogram per task, never the
whole vector, which is what lets TIES's global threshold be computed exactly while streaming.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pactmerge.merging.spec import TaskVectorStream

_DIGIT = 16
_INT_VIEW = {torch.float32: (torch.int32, 32), torch.float64: (torch.int64, 64)}


def kth_smallest_abs(stream: TaskVectorStream, num_tasks: int, ranks: list[int], dtype: torch.dtype) -> Tensor:
    """Per task t, the ``ranks[t]``-th smallest (1-indexed) ``|x|`` over every tensor of the stream.

    ``stream()`` yields (key, x) with x (T, *shape) in ``dtype`` (float32 or float64).
    Returns a (T,) tensor of ``dtype`` on the CPU.
    """
    int_dtype, bits = _INT_VIEW[dtype]
    prefix = [0] * num_tasks
    remaining = list(ranks)
    for shift in range(bits - _DIGIT, -1, -_DIGIT):
        counts = torch.zeros(num_tasks, 1 << _DIGIT, dtype=torch.int64)
        for _, x in stream():
            digits = []
            for t in range(num_tasks):
                v = x[t].detach().abs().reshape(-1).contiguous().view(int_dtype).to(torch.int64)
                if shift + _DIGIT < bits:  # keep only entries whose higher digits match
                    v = v[(v >> (shift + _DIGIT)) == prefix[t]]
                digits.append(((v >> shift) & ((1 << _DIGIT) - 1)) + (t << _DIGIT))
            counts += torch.bincount(torch.cat(digits).cpu(), minlength=num_tasks << _DIGIT).view(num_tasks, -1)
        cum = counts.cumsum(1)
        for t in range(num_tasks):
            d = int(torch.searchsorted(cum[t], torch.tensor(remaining[t])))
            if d > 0:
                remaining[t] -= int(cum[t, d - 1])
            prefix[t] = (prefix[t] << _DIGIT) | d
    out = torch.tensor(prefix, dtype=torch.int64).to(int_dtype)
    return out.view(dtype)
