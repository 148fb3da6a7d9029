"""The fused TFN's per-pass state: :class:`KernelState`, handed down to every layer.

What one forward pass shares across its layers: the flat basis and the block bases built from
it, the requested :class:`se3t.choices.Kernel` and its tuning, the radial sharing of the edges,
the torch evaluations' scratch buffers, and what ran (for the log and the tests).
"""

from __future__ import annotations

import torch
from torch import Tensor

from se3t.choices import Kernel
from se3t.nn import evaluations
from se3t.nn.kernel_spec import DEFAULT_CHUNK_ELEMENTS, DEFAULT_CHUNK_ELEMENTS_GPU, KernelSpec
from se3t.nn.sharing import RadialShare, radial_share
from se3t.so3.blocks import block_basis

__all__ = ["KernelState", "block_in_order", "compute_dtype", "permutes"]


class KernelState:
    """The fused kernel's state for ONE forward pass, passed down explicitly to every layer.

    Holds the flat ``basis`` of the pass, the block bases built from it (one per set of input
    and output degrees and dtype, shared by every layer that needs it), the requested
    :class:`Kernel` and the tuning it runs with (``tuner``: a
    :class:`se3t.nn.tuning.KernelTuner`, or None for the defaults), the scratch buffers of the
    torch evaluations (reused across chunks and layers: a fresh multi-MB tensor is a fresh
    ``mmap`` whose page faults made the radial GEMMs ~3x slower), and a count of the evaluations
    that ran (``ran``), which its ``repr`` shows.

    Backward passes run with the state of their forward pass (kept by the autograd node), so
    they reuse its buffers and tuning. A state is not meant to outlive its step.
    """

    def __init__(
        self,
        basis: Tensor,
        backend: Kernel | str = Kernel.AUTO,
        tuner=None,
        chunk_elements: int | None = None,
    ):
        try:
            self.backend = Kernel(backend)
        except ValueError:
            raise ValueError(
                f"kernel: backend must be one of {[b.value for b in Kernel]}, got {backend!r}"
            ) from None
        self.basis, self.tuner, self.chunk_elements = basis, tuner, chunk_elements
        self.blocks: dict[tuple, Tensor] = {}
        self.share: RadialShare | None = None  # of the pass's edge inputs (radial_share)
        self._share_of: tuple[Tensor, Tensor] | None = None  # (edge inputs, src) it was built on
        self.ran: dict[str, int] = {}
        self.tiles: dict[str, dict] = {}  # evaluation -> the tile sizes it ran with
        self._scratch: dict[tuple, Tensor] = {}

    def __repr__(self) -> str:
        ran = ", ".join(f"{k}: {v}" for k, v in sorted(self.ran.items())) or "nothing yet"
        blocks = ", ".join(
            " ".join([f"{ins}->{outs} {str(dt).removeprefix('torch.')}", *order])
            for ins, outs, dt, *order in self.blocks
        )
        tiles = "; ".join(f"{k} {v}" for k, v in sorted(self.tiles.items()))
        share = f", {self.share}" if self.share is not None else ""
        return (
            f"KernelState(backend={self.backend.value}, ran {{{ran}}}, "
            f"block bases [{blocks}]" + (f", tiles {tiles}" if tiles else "") + share + ")"
        )

    def block_basis(
        self, spec: KernelSpec, dt: torch.dtype, share: RadialShare | None = None
    ) -> Tensor:
        """The stacked block basis of ``spec``'s degrees (:func:`se3t.so3.blocks.block_basis`),
        built once per pass and shared by the layers; with ``share``, its edges in run order
        (:attr:`RadialShare.order`). A basis that needs a gradient gets a fresh block per call:
        each is then its own node of the autograd graph (as under activation checkpointing,
        where a shared one would tie the recomputed layers together)."""
        basis = self.basis

        def build():
            return block_in_order(basis, spec, dt, share)

        if basis.requires_grad and torch.is_grad_enabled():
            return build()
        key = (spec.in_degrees, spec.out_degrees, dt) + (("run order",) if permutes(share) else ())
        if key not in self.blocks:
            self.blocks[key] = build()
        return self.blocks[key]

    def radial_share(
        self, spec: KernelSpec, edge_inputs: Tensor, graph, evaluation: str | None = None
    ) -> RadialShare | None:
        """The pass's :class:`se3t.nn.sharing.RadialShare` of ``edge_inputs [E, F]`` (the
        radial profiles' inputs) when ``spec`` runs in an evaluation that shares radial rows
        (``cpp``; ``evaluation``: the one the caller asks for, else the state's choice), else
        None. Built once per pass: every layer gets the same inputs."""
        dt = compute_dtype(edge_inputs)
        how = evaluation or self._evaluation(spec, edge_inputs.device, dt)
        if not evaluations.entry(how).shares_radial:
            return None
        made = self._share_of
        if made is None or made[0] is not edge_inputs or made[1] is not graph.src:
            self.share = radial_share(edge_inputs, graph.src, graph.dst, graph.num_nodes)
            self._share_of = (edge_inputs, graph.src)
        return self.share

    def scratch(self, slot: str, numel: int, like: Tensor) -> Tensor:
        """A flat buffer of ``numel`` elements for the torch evaluations' temporaries (never
        returned or saved), grown on demand; callers must not hold a view of a slot across
        another call for the same slot."""
        key = (slot, like.dtype, like.device)
        buf = self._scratch.get(key)
        if buf is None or buf.numel() < numel:
            self._scratch.pop(key, None)  # free the old buffer before allocating the larger one
            buf = self._scratch[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return buf[:numel]

    def evaluation(self, spec: KernelSpec, z: Tensor) -> str:
        """The evaluation that runs ``spec`` on ``z``'s device and dtype (see the module
        docstring); a requested backend that cannot run here raises a ValueError that says
        why, except a missing compiler, which falls back to torch with a one-line notice."""
        return self._evaluation(spec, z.device, z.dtype)

    def _evaluation(self, spec: KernelSpec, device: torch.device, dt: torch.dtype) -> str:
        return evaluations.choose(self.backend, spec, device, dt).value

    def chunk_edges(self, spec: KernelSpec, z: Tensor) -> int:
        """Edges per chunk of the torch evaluations: from ``chunk_elements`` (radial outputs
        held at once) when given, else the device's default."""
        elements = self.chunk_elements
        if not elements:
            cpu = z.device.type == "cpu"
            elements = DEFAULT_CHUNK_ELEMENTS if cpu else DEFAULT_CHUNK_ELEMENTS_GPU
        return spec.chunk_size(elements)

    def tile(self, evaluation: str, spec: KernelSpec, z: Tensor) -> dict:
        """Tile sizes of ``evaluation`` for this shape: the tuner's (timed trial at first use,
        cached per machine) or the backend's defaults."""
        if self.tuner is not None:
            t = self.tuner.tiles(evaluation, spec, z)
        else:
            t = dict(evaluations.entry(evaluation).tiles)
        self.tiles[evaluation] = t
        return t

    def concat_operands(
        self,
        spec: KernelSpec,
        basis: Tensor,
        xs: list[Tensor],
        dt: torch.dtype,
        share: RadialShare | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(x_all, block)`` of the degree-concatenated evaluations: the node features of all
        input degrees ``[N, sum (2 d_in + 1), C]`` and the group's block basis (the pass's,
        shared by the layers, when ``basis`` is the state's), its edges in ``share``'s run
        order."""
        x_all = torch.cat([x.transpose(1, 2) for x in xs], dim=1)  # [N, sum (2d+1), C]
        if basis is self.basis:
            return x_all, self.block_basis(spec, dt, share)
        return x_all, block_in_order(basis, spec, dt, share)


def compute_dtype(t: Tensor) -> torch.dtype:
    """The dtype the fused op computes in for inputs like ``t``: autocast's when enabled."""
    if torch.is_autocast_enabled(t.device.type):
        return torch.get_autocast_dtype(t.device.type)
    return t.dtype


def permutes(share: RadialShare | None) -> bool:
    return share is not None and share.num_runs != share.num_edges  # runs of one: identity


def block_in_order(
    basis: Tensor, spec: KernelSpec, dt: torch.dtype, share: RadialShare | None
) -> Tensor:
    if permutes(share):
        basis = basis.index_select(0, share.order)
    return block_basis(basis.to(dt), spec.in_degrees, spec.out_degrees, spec.basis_degree)
