"""Radial sharing: one radial row for an edge and its reverse.

The radial profile of an edge is a function of its scalar inputs alone (the edge's features
and its length), and in a molecular graph every edge ``a -> b`` has a reverse ``b -> a`` with
the same bond type and the same length. Both get the same radial weights ``R``, the largest
computation of the model (``z @ W^T``, ~45,000 values per edge per layer at the paper's sizes).
Computing ``R`` once per such pair, and summing the pair's ``dR`` before ``dW`` and ``dz``,
halves the radial GEMMs of the forward and the backward pass and computes the same function.

A pair shares only when its inputs are equal value for value (``==`` on every column; a NaN
never shares), and the sharing is checked on the actual inputs of every pass, so a graph whose
edges have no reverse, or whose reverse edge differs (a directed feature), simply shares less.
When the inputs need a gradient nothing is shared: equal values need not be the same function
of the parameters, and their gradients could then differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["RadialShare", "radial_share"]


@dataclass(frozen=True)
class RadialShare:
    """Runs of edges that share one radial row, in run order.

    ``order [E]``: the edges, run by run (a run is an edge and its reverse, or one edge);
    ``offsets [U + 1]``: run ``u`` is ``order[offsets[u]:offsets[u + 1]]``; ``rep [U]``: the
    first edge of each run, whose inputs compute the run's row; ``run_of [E]``: the run of
    each edge (in edge order).
    """

    order: Tensor
    offsets: Tensor
    rep: Tensor
    run_of: Tensor

    @classmethod
    def single(cls, num_edges: int, device: torch.device | str = "cpu") -> RadialShare:
        """Every edge a run of its own: nothing shared."""
        ar = torch.arange(num_edges, device=device)
        return cls(order=ar, offsets=torch.arange(num_edges + 1, device=device), rep=ar, run_of=ar)

    @property
    def num_runs(self) -> int:
        return int(self.rep.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.order.shape[0])

    def take(self, per_edge: Tensor) -> Tensor:
        """The rows of ``per_edge [E, ...]`` that compute each run's row: ``[U, ...]``."""
        return per_edge.index_select(0, self.rep)

    def expand(self, per_run: Tensor) -> Tensor:
        """Back to one row per edge: ``[U, ...] -> [E, ...]``."""
        return per_run.index_select(0, self.run_of)

    def __repr__(self) -> str:
        return f"RadialShare({self.num_edges} edges in {self.num_runs} radial rows)"


def radial_share(edge_inputs: Tensor, src: Tensor, dst: Tensor, num_nodes: int) -> RadialShare:
    """Pair every edge with its reverse where both have equal radial inputs
    (``edge_inputs [E, F]``); edges without such a partner are runs of one."""
    E, device = int(src.shape[0]), src.device
    ar = torch.arange(E, device=device)
    partner = torch.full((E,), -1, dtype=torch.long, device=device)
    if E and not edge_inputs.requires_grad:
        src, dst = src.long(), dst.long()
        key, rkey = src * num_nodes + dst, dst * num_nodes + src
        sorted_key, idx = torch.sort(key)
        pos = torch.searchsorted(sorted_key, rkey).clamp_(max=E - 1)
        rev = torch.where(sorted_key[pos] == rkey, idx[pos], -1)
        # mutual (a multigraph's repeated edges pair at most once), not a self-loop, equal inputs
        ok = (rev >= 0) & (rev != ar)
        ok &= rev.clamp(min=0).index_select(0, rev.clamp(min=0)) == ar
        ok &= (edge_inputs == edge_inputs.index_select(0, rev.clamp(min=0))).all(dim=1)
        partner = torch.where(ok, rev, partner)
    lead = torch.nonzero((partner < 0) | (ar < partner)).flatten()  # first edge of each run
    pair = partner.index_select(0, lead)
    sizes = 1 + (pair >= 0).long()
    offsets = torch.zeros(lead.shape[0] + 1, dtype=torch.long, device=device)
    torch.cumsum(sizes, 0, out=offsets[1:])
    order = torch.empty(E, dtype=torch.long, device=device)
    order[offsets[:-1]] = lead
    order[offsets[:-1][pair >= 0] + 1] = pair[pair >= 0]
    run_of = torch.empty(E, dtype=torch.long, device=device)
    run_of[order] = torch.repeat_interleave(torch.arange(lead.shape[0], device=device), sizes)
    return RadialShare(order=order, offsets=offsets, rep=lead, run_of=run_of)
