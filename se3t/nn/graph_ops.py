"""Graph operations on plain torch index ops (no DGL): gather, scatter, edge softmax, pooling.

Edges point ``src -> dst``; messages live on edges and are reduced onto their destination.
Gathers and scatters run on 2-D views ``[rows, features]``: torch's CPU ``index_add_`` on
3-D tensors is ~1000x slower than on the same data viewed as 2-D (and the backward of
``index_select`` is an ``index_add_`` of the input's shape).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["edge_softmax", "gather", "scatter_max", "scatter_mean", "scatter_sum"]


def gather(x: Tensor, index: Tensor) -> Tensor:
    """``x[index]`` along dim 0: ``[N, ...] -> [E, ...]``."""
    return x.reshape(x.shape[0], -1).index_select(0, index).view(-1, *x.shape[1:])


def scatter_sum(src: Tensor, index: Tensor, num: int) -> Tensor:
    """``out[i] = sum_{e: index[e] = i} src[e]``: ``[E, ...] -> [num, ...]`` (zeros where empty)."""
    width = src.shape[1:].numel()  # spelled out: src may have no rows (no edges)
    out = src.new_zeros((num, width))
    return out.index_add_(0, index, src.reshape(src.shape[0], width)).view(num, *src.shape[1:])


def scatter_mean(src: Tensor, index: Tensor, num: int) -> Tensor:
    """Mean of ``src`` rows per ``index`` (zeros where empty)."""
    total = scatter_sum(src, index, num)
    count = torch.bincount(index, minlength=num).clamp_(min=1).to(src.dtype)
    return total / count.view(-1, *([1] * (src.dim() - 1)))


def scatter_max(src: Tensor, index: Tensor, num: int) -> Tensor:
    """Max of ``src`` rows per ``index``; gradient flows to the arg-max rows (ties share it)."""
    shape = (num, *src.shape[1:])
    idx = index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)
    return src.new_zeros(shape).scatter_reduce(0, idx, src, reduce="amax", include_self=False)


def edge_softmax(logits: Tensor, dst: Tensor, num_nodes: int) -> Tensor:
    """Softmax of edge ``logits [E, ...]`` over the incoming edges of each destination node.

    ``alpha[e] = exp(l[e] - max_dst) / sum_{e': dst[e'] = dst[e]} exp(l[e'] - max_dst)``, computed
    in at least float32 (stable under bf16/fp16 autocast) and returned in ``logits.dtype``. The
    per-destination max is a constant shift (detached), which leaves the softmax and its
    gradient unchanged.
    """
    work = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    with torch.no_grad():
        peak = scatter_max(work, dst, num_nodes)
    ex = torch.exp(work - gather(peak, dst))
    denom = scatter_sum(ex, dst, num_nodes)
    return (ex / gather(denom, dst)).to(logits.dtype)
