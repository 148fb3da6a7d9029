"""The fused TFN's descriptor: :class:`KernelSpec`, the static layout of one fusion group.

Pure layout (degrees, channels, row offsets of the radial last layer, rows of the block basis,
index permutations); no tensors of a pass. Every evaluation (:mod:`se3t.nn.evaluations`) reads
its operands through it, so the parameter layout is the same whichever evaluation runs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from se3t.so3.basis import num_freq, pair_offsets
from se3t.so3.blocks import block_shape

__all__ = [
    "DEFAULT_CHUNK_ELEMENTS",
    "DEFAULT_CHUNK_ELEMENTS_GPU",
    "KernelSpec",
    "permuted_weights",
]

# radial outputs held at once per chunk (elements), on CPU: 16 MB in float32, i.e. 256 edges
# of the paper model's widest output degree. Small enough that the chunk's radial weights stay
# close to the cores between the GEMM that writes them and the bmm calls that read them (at
# 1 << 25, 2048 edges, every chunk streamed 128 MB through DRAM and a conv's fwd+bwd was ~3x
# slower on the 2-core dev box); large enough that per-chunk op overhead stays small
# (1 << 21 to 1 << 24 measure within 5 %, 1 << 20 is 20 % slower).
DEFAULT_CHUNK_ELEMENTS = 1 << 22
# on a GPU every op of the chunk loop is a kernel launch, and memory is plentiful: 64 M radial
# values (128 MB in fp16, 4,096 edges of the widest output degree) keep a batch of 240 QM9
# molecules (~9,000 edges) to three chunks while the op still never holds the whole layer's
# radial output (0.3 GB in fp16 at that batch size, per output degree)
DEFAULT_CHUNK_ELEMENTS_GPU = 1 << 26


class KernelSpec:
    """Static layout of one fusion group: input and output degrees/channels and offsets.

    ``ins``/``outs``: lists of ``(degree, channels)``; ``basis_degree``: the max degree of the
    flat basis the op reads. The radial last layer's rows are laid out per output degree, then
    per input degree, as a ``[C_o, C_i * num_freq]`` block (``J`` fastest) for each pair:
    ``w_off[(d_in, d_out)]`` is the block's first row. One group's messages to ``d_out`` are
    returned as ``[E, C_o, 2 d_out + 1]``.
    """

    def __init__(self, ins: list[tuple[int, int]], outs: list[tuple[int, int]], basis_degree: int):
        self.ins, self.outs, self.basis_degree = list(ins), list(outs), basis_degree
        po = pair_offsets(basis_degree)
        self.w_off: dict[tuple[int, int], int] = {}
        self.do_rows: dict[int, tuple[int, int]] = {}  # d_out -> (first row, rows)
        self.basis_cols: dict[tuple[int, int], tuple[int, int, int]] = {}
        o = 0
        for do, co in self.outs:
            first = o
            for di, ci in self.ins:
                self.w_off[(di, do)] = o
                o += co * ci * num_freq(di, do)
                self.basis_cols[(di, do)] = po[(di, do)]
            self.do_rows[do] = (first, o - first)
        self.num_radial = o

        # the degree-concatenated layout (every backend but torch-pairs) needs one channel
        # count across the input degrees
        self.uniform_channels = len({ci for _, ci in self.ins}) == 1
        self._perm: dict[tuple[int, bool], Tensor] = {}
        self._on_device: dict[tuple, Tensor] = {}  # index tensors per device (see _cached)
        # rows of each d_out's block in the stacked block basis (se3t.so3.blocks)
        self.block_rows: dict[int, tuple[int, int]] = {}
        r = 0
        for do in self.out_degrees:
            n = block_shape(self.in_degrees, do)[0]
            self.block_rows[do] = (r, r + n)
            r += n

    @property
    def in_degrees(self) -> tuple[int, ...]:
        return tuple(di for di, _ in self.ins)

    @property
    def out_degrees(self) -> tuple[int, ...]:
        return tuple(do for do, _ in self.outs)

    def concat_perm(self, do: int, channels_first: bool = False) -> Tensor:
        """Rows of the radial last layer of ``d_out``, relative to its first row, in the order
        the degree-concatenated op reads them in: ``(K, c_o)`` with ``K = (d_in, J, c_i)``, or
        ``(c_o, K)`` with ``channels_first``. A permutation of the stored ``(d_in, c_o, c_i,
        J)`` order, so the parameter layout is the same for every evaluation and for
        :func:`se3t.nn.conv.pairwise_reference`."""
        perm = self._perm.get((do, channels_first))
        if perm is None:
            co, ci = dict(self.outs)[do], self.ins[0][1]
            k = ci * sum(num_freq(di, do) for di in self.in_degrees)
            perm = torch.empty(co * k, dtype=torch.long)
            o, i = torch.arange(co).view(1, 1, co), torch.arange(ci).view(1, ci, 1)
            j0 = 0
            for di in self.in_degrees:
                nf = num_freq(di, do)
                j = torch.arange(nf).view(nf, 1, 1)
                base = self.w_off[(di, do)] - self.do_rows[do][0]
                kk = (j0 + j) * ci + i  # position in K
                pos = o * k + kk if channels_first else kk * co + o
                perm[pos.flatten()] = (base + (o * ci + i) * nf + j).flatten()
                j0 += nf
            self._perm[(do, channels_first)] = perm
        return perm

    def _cached(self, key: tuple, device: torch.device, make) -> Tensor:
        """``make()`` (a CPU index tensor) on ``device``, built once per device: a host-to-GPU
        copy per call would synchronize every step."""
        key = (*key, str(device))
        t = self._on_device.get(key)
        if t is None:
            t = self._on_device[key] = make().to(device)
        return t

    def concat_inverse(self, do: int, device: torch.device, channels_first: bool = False) -> Tensor:
        """The inverse of :meth:`concat_perm`, per device: stored row ``r`` of ``d_out``'s
        block is row ``inverse[r]`` of the concatenated order."""
        return self._cached(
            ("inverse", do, channels_first),
            device,
            lambda: torch.argsort(self.concat_perm(do, channels_first)),
        )

    def concat_rows(self, do: int, channels_first: bool, device: torch.device) -> Tensor:
        """:meth:`concat_perm` as absolute row indices, per device."""
        return self._cached(
            ("rows", do, channels_first),
            device,
            lambda: self.do_rows[do][0] + self.concat_perm(do, channels_first),
        )

    def pairs(self):
        for do, co in self.outs:
            for di, ci in self.ins:
                yield di, ci, do, co

    def pair_rows(self, di: int, do: int) -> slice:
        """Rows of the radial last layer that hold pair ``(d_in, d_out)`` ([C_o, C_i, nf])."""
        co, ci = dict(self.outs)[do], dict(self.ins)[di]
        start = self.w_off[(di, do)]
        return slice(start, start + co * ci * num_freq(di, do))

    def basis_pair(self, basis: Tensor, di: int, do: int) -> Tensor:
        """[E, 2 d_in + 1, num_freq * (2 d_out + 1)] view of a flat basis."""
        start, cols, col = self.basis_cols[(di, do)]
        block = basis[:, start : start + (2 * di + 1) * cols].view(-1, 2 * di + 1, cols)
        return block[:, :, col : col + num_freq(di, do) * (2 * do + 1)]

    def chunk_size(self, elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
        widest = max(rows for _, rows in self.do_rows.values())
        return max(1, elements // max(widest, 1))


def permuted_weights(
    spec: KernelSpec, weight: Tensor, channels_first: bool = False
) -> dict[int, Tensor]:
    """``{d_out: [H, rows]}``: the radial last layer's rows of ``d_out`` in the concatenated
    order, transposed and contiguous (``z @ W^T`` runs ~20 % faster with ``W^T`` stored than
    with a transposed view on this CPU's MKL)."""
    out = {}
    for do, _ in spec.outs:
        rows = weight.index_select(0, spec.concat_rows(do, channels_first, weight.device))
        out[do] = rows.t().contiguous()
    return out
