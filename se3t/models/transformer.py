"""The SE(3)-Transformer (Fuchs et al. 2020) and its pooled property-prediction head.

``SE3Transformer``: ``num_layers`` x [AttentionBlockSE3 -> NormSE3] then a TFN convolution
(with self-interaction) to the output fiber — NVIDIA's architecture. ``SE3TransformerPooled``
adds max/mean pooling of the degree-0 outputs over each molecule and an MLP
``C -> C -> out_dim``; ``se3t.models.build(model_cfg)`` builds it from the ``model`` config.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from se3t.choices import Fusion, Kernel, NvidiaFuseLevel, RadialSharing
from se3t.graph import Batch, Graph
from se3t.nn.attention import AttentionBlockSE3
from se3t.nn.conv import ConvSE3, nvidia_fusion
from se3t.nn.kernel import KernelState
from se3t.nn.norm import NormSE3
from se3t.nn.pooling import GraphPooling
from se3t.nn.tuning import KernelTuner, default_cache
from se3t.so3.basis import basis_size, compute_basis_flat, flatten_basis
from se3t.so3.fiber import Fiber

__all__ = ["SE3Transformer", "SE3TransformerPooled", "build", "kernel_tuner", "parameterization"]


def _kernel(kernel: Kernel | str, who: str) -> Kernel:
    try:
        return Kernel(kernel)
    except ValueError:
        raise ValueError(
            f"{who}: kernel must be one of {[b.value for b in Kernel]}, got {kernel!r}"
        ) from None


class SE3Transformer(nn.Module):
    """Equivariant graph network ``fiber_in -> fiber_out`` on node features.

    ``low_memory``: in training, every attention block (with its norm) runs under activation
    checkpointing: only its input is kept and its forward pass is recomputed in backward
    (~1.3x the compute for a fraction of the activation memory). ``chunk_elements`` bounds the
    radial outputs held at once by the torch evaluation of the fused convolutions. ``kernel``:
    the :class:`se3t.choices.Kernel` of the fused convolutions; ``tuner``: a
    :class:`se3t.nn.tuning.KernelTuner` (tile sizes per machine and shape), None for defaults.
    Every forward pass builds one :class:`se3t.nn.kernel.KernelState` (or takes ``state``) and
    hands it to every layer.
    radial outputs held at once by the fused convolutions.

    NVIDIA's parameterization (docs/model.md): ``nvidia_fuse_level`` ("none", "partial",
    "full") gives every convolution the radial sharing NVIDIA's ``ConvSE3`` would pick for its
    fibers at that maximum level (:func:`se3t.nn.conv.nvidia_fusion`), and its pairwise
    convolutions NVIDIA's ``(0, 0)`` kernel without the basis constant; it applies when
    ``fusion`` is ``auto`` (an explicit fusion sets every layer). ``self_interaction_per_edge``:
    the final convolution adds its self-interaction per incoming edge (NVIDIA) instead of once
    per node.
    """

    def __init__(
        self,
        fiber_in: Fiber,
        fiber_hidden: Fiber,
        fiber_out: Fiber,
        fiber_edge: Fiber | None = None,
        *,
        num_layers: int = 7,
        num_heads: int = 8,
        channels_div: int = 2,
        norm: bool = True,
        layer_norm: bool = True,
        radial_hidden: int = 32,
        max_degree: int | None = None,
        fusion: Fusion | str = Fusion.AUTO,
        low_memory: bool = False,
        chunk_elements: int | None = None,
        kernel: Kernel | str = Kernel.AUTO,
        tuner=None,
        nvidia_fuse_level: NvidiaFuseLevel | str | None = None,
        self_interaction_per_edge: bool = False,
    ):
        super().__init__()
        self.kernel = _kernel(kernel, "SE3Transformer")
        self.tuner, self.chunk_elements = tuner, chunk_elements
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(
                f"SE3Transformer: num_layers must be a positive int, got {num_layers!r}"
            )
        self.fiber_in, self.fiber_hidden = Fiber(fiber_in), Fiber(fiber_hidden)
        self.fiber_out = Fiber(fiber_out)
        self.fiber_edge = Fiber(fiber_edge) if fiber_edge else None
        if max_degree is None:
            max_degree = max(
                f.max_degree for f in (self.fiber_in, self.fiber_hidden, self.fiber_out)
            )
        self.max_degree, self.low_memory = max_degree, low_memory
        if nvidia_fuse_level is not None and Fusion(fusion) is not Fusion.AUTO:
            # an explicit fusion (the pairwise reference of profiling) sets every layer
            nvidia_fuse_level = None
        self.nvidia_fuse_level, self._requested_fusion = nvidia_fuse_level, fusion
        common = dict(
            max_degree=max_degree,
            layer_norm=layer_norm,
            radial_hidden=radial_hidden,
            chunk_elements=chunk_elements,
        )
        self.blocks = self._attention_blocks(num_layers, num_heads, channels_div, norm, common)
        f = self.fiber_hidden  # the blocks' output (num_layers >= 1)
        self.conv_out = ConvSE3(
            f,
            self.fiber_out,
            self.fiber_edge,
            pool=True,
            self_interaction=True,
            self_interaction_per_edge=self_interaction_per_edge,
            **common,
            **self._layout(f, self.fiber_out),
        )

    def _attention_blocks(
        self, num_layers: int, num_heads: int, channels_div: int, norm: bool, common: dict
    ) -> nn.ModuleList:
        """``num_layers`` x [AttentionBlockSE3 -> NormSE3 (or identity)]."""
        blocks = []
        f = self.fiber_in
        for _ in range(num_layers):
            value = self.fiber_hidden.scaled(channels_div)
            key = Fiber({d: c for d, c in value.items() if d in f})
            att = AttentionBlockSE3(
                f,
                self.fiber_hidden,
                self.fiber_edge,
                num_heads=num_heads,
                channels_div=channels_div,
                **common,
                **self._layout(f, value + key),
            )
            blocks.append(
                nn.ModuleList([att, NormSE3(self.fiber_hidden) if norm else nn.Identity()])
            )
            f = self.fiber_hidden
        return nn.ModuleList(blocks)

    def _layout(self, fin: Fiber, fout: Fiber) -> dict:
        """A convolution's fusion: the one given, or NVIDIA's for these fibers at its level."""
        if self.nvidia_fuse_level is None:
            return dict(fusion=self._requested_fusion)
        fu = nvidia_fusion(fin, fout, self.fiber_edge, self.max_degree, self.nvidia_fuse_level)
        return dict(fusion=fu, unit_scalar_kernel=fu is Fusion.PAIRWISE)

    @property
    def fusion(self) -> Fusion:
        """The fusion of the hidden layers (NVIDIA's layout may differ in the first and last
        convolutions: :func:`se3t.nn.conv.nvidia_fusion`)."""
        return self.blocks[-1][0].to_key_value.fusion

    @staticmethod
    def _block(att, norm, feats, graph, basis, edge_scalars, edge_feats, state):
        return norm(att(feats, graph, basis, edge_scalars, edge_feats, state))

    def kernel_state(self, basis: Tensor) -> KernelState:
        """A fresh :class:`se3t.nn.kernel.KernelState` for one forward pass on ``basis``."""
        return KernelState(basis, self.kernel, self.tuner, self.chunk_elements)

    def forward(
        self,
        feats: dict[int, Tensor],
        graph: Graph,
        basis: Tensor,
        edge_scalars: Tensor,
        edge_feats: dict[int, Tensor] | None = None,
        state: KernelState | None = None,
    ) -> dict[int, Tensor]:
        """``feats {d: [N, C, 2d+1]}``, flat ``basis [E, basis_size]``, ``edge_scalars
        [E, F_edge + 1]`` -> ``{d: [N, C_out, 2d+1]}``; ``state``: see :meth:`kernel_state`."""
        if state is None:
            state = self.kernel_state(basis)
        for att, norm in self.blocks:
            if self.low_memory and torch.is_grad_enabled():
                feats = checkpoint(
                    self._block,
                    att,
                    norm,
                    feats,
                    graph,
                    basis,
                    edge_scalars,
                    edge_feats,
                    state,
                    use_reentrant=False,
                )
            else:
                feats = self._block(att, norm, feats, graph, basis, edge_scalars, edge_feats, state)
        return self.conv_out(feats, graph, basis, edge_scalars, edge_feats, state)


def _check_sizes(node_features, edge_features, out_dim, channels) -> None:
    for name, v in (
        ("node_features", node_features),
        ("edge_features", edge_features),
        ("out_dim", out_dim),
        ("channels", channels),
    ):
        # edge_features may be 0: a radius graph without bond types (the radial profiles
        # then see the edge length alone)
        low = 0 if name == "edge_features" else 1
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"SE3TransformerPooled: {name} must be an int >= {low}, got {v!r}")


class SE3TransformerPooled(nn.Module):
    """Invariant property head: ``SE3Transformer`` to ``{0: C}``, pooling, MLP ``C -> C -> out``.

    ``forward(batch, basis=None) -> [num_graphs, out_dim]``. Node features ``[N, F_node]`` are
    the degree-0 input; the radial profiles see the edge features ``[E, F_edge]`` and the edge
    length. ``basis`` may be the flat ``[E, basis_size]`` tensor, the per-pair dict, or None
    (computed here from the batch's edge vectors), edges in the batch's order.
    """

    def __init__(
        self,
        *,
        node_features: int = 6,
        edge_features: int = 4,
        out_dim: int = 1,
        num_layers: int = 7,
        max_degree: int = 3,
        channels: int = 32,
        num_heads: int = 8,
        channels_div: int = 2,
        norm: bool = True,
        layer_norm: bool = True,
        radial_hidden: int = 32,
        pooling: str = "max",
        fusion: Fusion | str = Fusion.AUTO,
        low_memory: bool = False,
        chunk_elements: int | None = None,
        kernel: Kernel | str = Kernel.AUTO,
        tuner=None,
        nvidia_fuse_level: NvidiaFuseLevel | str | None = None,
        self_interaction_per_edge: bool = False,
    ):
        super().__init__()
        _check_sizes(node_features, edge_features, out_dim, channels)
        self.node_features, self.edge_features = node_features, edge_features
        self.max_degree = max_degree
        c_out = (max_degree + 1) * channels
        self.transformer = SE3Transformer(
            Fiber({0: node_features}),
            Fiber.create(max_degree + 1, channels),
            Fiber({0: c_out}),
            Fiber({0: edge_features}) if edge_features else None,
            num_layers=num_layers,
            num_heads=num_heads,
            channels_div=channels_div,
            norm=norm,
            layer_norm=layer_norm,
            radial_hidden=radial_hidden,
            max_degree=max_degree,
            fusion=fusion,
            low_memory=low_memory,
            chunk_elements=chunk_elements,
            kernel=kernel,
            tuner=tuner,
            nvidia_fuse_level=nvidia_fuse_level,
            self_interaction_per_edge=self_interaction_per_edge,
        )
        self.pooling = GraphPooling(pooling)
        self.mlp = nn.Sequential(nn.Linear(c_out, c_out), nn.ReLU(), nn.Linear(c_out, out_dim))

    @property
    def fusion(self) -> Fusion:
        return self.transformer.fusion

    def prepare_basis(self, batch: Batch, basis=None) -> Tensor:
        """The flat basis of ``batch`` (given, flattened from a dict, or computed)."""
        E = batch.graph.num_edges
        if basis is None:
            return compute_basis_flat(batch.edge_vec, self.max_degree)
        if isinstance(basis, dict):
            basis = flatten_basis(basis, self.max_degree)
        size = basis_size(self.max_degree)
        if not isinstance(basis, Tensor) or tuple(basis.shape) != (E, size):
            got = list(basis.shape) if isinstance(basis, Tensor) else type(basis).__name__
            raise ValueError(f"basis: expected [{E}, {size}] for the batch's {E} edges, got {got}")
        return basis.to(batch.pos.device)

    def forward(
        self, batch: Batch, basis: Tensor | dict | None = None, state: KernelState | None = None
    ) -> Tensor:
        """``state``: the pass's :class:`se3t.nn.kernel.KernelState` (None: a fresh one from
        ``self.transformer.kernel_state``); pass one to see which evaluations ran."""
        graph = batch.graph
        N, E = graph.num_nodes, graph.num_edges
        if tuple(batch.node_feats.shape) != (N, self.node_features):
            raise ValueError(
                f"batch.node_feats: expected [{N}, {self.node_features}], "
                f"got {list(batch.node_feats.shape)}"
            )
        if tuple(batch.edge_feats.shape) != (E, self.edge_features):
            raise ValueError(
                f"batch.edge_feats: expected [{E}, {self.edge_features}], "
                f"got {list(batch.edge_feats.shape)}"
            )
        dtype = self.mlp[0].weight.dtype
        basis = self.prepare_basis(batch, basis)  # [E, basis_size]
        if state is not None and state.basis is not basis:
            raise ValueError(
                "SE3TransformerPooled: the kernel state was built for another basis tensor; "
                "build it with model.transformer.kernel_state(model.prepare_basis(batch, basis))"
            )
        edge_vec = batch.edge_vec  # [E, 3]
        edge_scalars = torch.cat(
            [batch.edge_feats.to(dtype), edge_vec.norm(dim=1, keepdim=True).to(dtype)], dim=1
        )  # [E, F_edge + 1]
        feats = {0: batch.node_feats.to(dtype).unsqueeze(-1)}  # {0: [N, F_node, 1]}
        out = self.transformer(feats, graph, basis, edge_scalars, None, state)  # {0: [N, C_out, 1]}
        pooled = self.pooling(out, graph.node_graph, graph.num_graphs)  # [B, C_out]
        return self.mlp(pooled)  # [B, out_dim]


def kernel_tuner(model_cfg) -> KernelTuner:
    """The :class:`se3t.nn.tuning.KernelTuner` of a ``ModelConfig``: config overrides, the
    user's tuning cache, a timed trial at first use unless ``kernel_tuning`` is off."""
    overrides = {
        "chunk_edges": model_cfg.kernel_chunk_edges,
        "edge_block": model_cfg.kernel_edge_block,
        "k_tile": model_cfg.kernel_k_tile,
        "k_tile_backward": model_cfg.kernel_k_tile_backward,
    }
    return KernelTuner(overrides, cache=default_cache(), trial=model_cfg.kernel_tuning)


def build(model_cfg) -> SE3TransformerPooled:
    """The pooled model of a ``ModelConfig`` (``se3t.config``), on CPU in float32."""
    return SE3TransformerPooled(
        node_features=model_cfg.node_features,
        edge_features=model_cfg.edge_features,
        out_dim=model_cfg.out_dim,
        num_layers=model_cfg.num_layers,
        max_degree=model_cfg.max_degree,
        channels=model_cfg.channels,
        num_heads=model_cfg.heads,
        channels_div=model_cfg.channels_div,
        norm=model_cfg.norm,
        layer_norm=model_cfg.layer_norm,
        radial_hidden=model_cfg.radial_hidden,
        pooling=model_cfg.pooling,
        fusion=model_cfg.fusion,
        low_memory=model_cfg.low_memory,
        kernel=model_cfg.kernel,
        tuner=kernel_tuner(model_cfg),
        **parameterization(model_cfg),
    )


def parameterization(model_cfg) -> dict:
    """Keyword arguments of the model's function (radial sharing, self-interaction) from the
    ``model.radial_sharing`` and ``model.self_interaction`` config keys."""
    return dict(
        nvidia_fuse_level=RadialSharing(model_cfg.radial_sharing).fuse_level,
        self_interaction_per_edge=model_cfg.self_interaction == "edge",
    )
