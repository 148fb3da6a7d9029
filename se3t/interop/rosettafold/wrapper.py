"""The RF family's ``SE3TransformerWrapper``: their constructor and call on se3t's blocks."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from se3t.choices import Kernel
from se3t.interop.rosettafold.blocks import (
    FINAL_LAYERS,
    POPULATE_EDGE,
    VARIANT_SETTINGS,
    VARIANTS,
    Blocks,
    Variant,
)
from se3t.interop.rosettafold.graphs import graph_and_positions
from se3t.interop.rosettafold.layout import register_hooks, vendored_entries
from se3t.nn.conv import ConvSE3
from se3t.so3.fiber import Fiber


def _positive_int(value, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"SE3TransformerWrapper: {name} must be an int >= {low}, got {value!r}")
    return value


# the constructor's counts and the least each may be
_COUNTS = {
    "num_layers": 1,
    "num_channels": 1,
    "num_degrees": 1,
    "n_heads": 1,
    "div": 1,
    "l0_in_features": 1,
    "l0_out_features": 1,
    "l1_in_features": 0,
    "l1_out_features": 0,
    "num_edge_features": 0,
}


def _check_counts(arguments: Mapping) -> None:
    """Each count among the constructor's ``arguments`` (its locals) is an int at its least."""
    for name, low in _COUNTS.items():
        _positive_int(arguments[name], name, low)


def _variant_choices(
    variant: str, final_layer: str | None, populate_edge: str | None
) -> tuple[Variant, str, str]:
    """The variant's settings, and its final layer and edge population unless overridden."""
    if variant not in VARIANT_SETTINGS:
        raise ValueError(
            f"SE3TransformerWrapper: variant must be one of {VARIANTS}, got {variant!r}"
        )
    v = VARIANT_SETTINGS[variant]
    final_layer = final_layer or v.final_layer
    populate_edge = populate_edge or v.populate_edge
    if final_layer not in FINAL_LAYERS:
        raise ValueError(
            f"SE3TransformerWrapper: final_layer must be one of {FINAL_LAYERS} "
            f"(the attention final layer is not supported), got {final_layer!r}"
        )
    if populate_edge not in POPULATE_EDGE:
        raise ValueError(
            f"SE3TransformerWrapper: populate_edge must be one of {POPULATE_EDGE}, "
            f"got {populate_edge!r}"
        )
    return v, final_layer, populate_edge


def _kernel(kernel: Kernel | str) -> Kernel:
    try:
        return Kernel(kernel)
    except ValueError:
        raise ValueError(
            f"SE3TransformerWrapper: kernel must be one of {[b.value for b in Kernel]}, "
            f"got {kernel!r}"
        ) from None


def _fiber(l0: int, l1: int) -> Fiber:
    return Fiber({0: l0, **({1: l1} if l1 else {})})


def _channel_divisors(channels_div: int | Mapping, fiber_hidden: Fiber) -> dict[int, int]:
    """``{degree: divisor}`` from an int or a per-degree mapping, each dividing its channels."""
    if isinstance(channels_div, Mapping):
        divs = {int(d): int(c) for d, c in channels_div.items()}
    else:
        divs = {d: int(channels_div) for d in fiber_hidden.degrees}
    bad = {d: c for d, c in fiber_hidden.items() if d not in divs or c % divs[d]}
    if bad:
        raise ValueError(
            f"SE3TransformerWrapper: channels_div {channels_div!r} must divide the hidden "
            f"channels of every degree, {dict(fiber_hidden)}"
        )
    return divs


class SE3TransformerWrapper(nn.Module):
    """The RF family's ``SE3TransformerWrapper`` on se3t (see the module docstring).

    Their arguments, with their defaults, then keywords: ``variant`` ("rfdiffusion", "rf2",
    "rfaa": whose copy's function), ``final_layer`` ("conv", "lin"), ``populate_edge``
    ("lin", "arcsin", "log", "zero") overriding the variant's; ``sum_over_edge`` (RFAA's
    option: False averages the final convolution over incoming edges); ``channels_div`` (an
    int or ``{degree: divisor}``, default ``div``); ``tensor_cores``, ``low_memory`` (their
    fuse-level switches; they change the parameter layout, never the memory here);
    ``norm``, ``use_layer_norm``; ``kernel``: se3t's :class:`se3t.choices.Kernel`.
    """

    def __init__(
        self,
        num_layers: int = 2,
        num_channels: int = 32,
        num_degrees: int = 3,
        n_heads: int = 4,
        div: int = 4,
        l0_in_features: int = 32,
        l0_out_features: int = 32,
        l1_in_features: int = 3,
        l1_out_features: int = 2,
        num_edge_features: int = 32,
        *,
        variant: str = "rfdiffusion",
        final_layer: str | None = None,
        populate_edge: str | None = None,
        sum_over_edge: bool = True,
        channels_div: int | Mapping | None = None,
        tensor_cores: bool = False,
        low_memory: bool = False,
        norm: bool = True,
        use_layer_norm: bool = True,
        kernel: Kernel | str = Kernel.AUTO,
    ):
        super().__init__()
        v, final_layer, populate_edge = _variant_choices(variant, final_layer, populate_edge)
        _check_counts(locals())
        self.kernel = _kernel(kernel)
        self.variant, self.l1_in, self.l1_out = variant, l1_in_features, l1_out_features
        self.autocast_off = v.autocast_off
        fiber_hidden = Fiber.create(num_degrees, num_channels)
        self.se3 = Blocks(
            fiber_in=_fiber(l0_in_features, l1_in_features),
            fiber_hidden=fiber_hidden,
            fiber_out=_fiber(l0_out_features, l1_out_features),
            fiber_edge=Fiber({0: num_edge_features}) if num_edge_features else None,
            num_layers=num_layers,
            num_heads=n_heads,
            channels_div=_channel_divisors(
                div if channels_div is None else channels_div, fiber_hidden
            ),
            variant=v,
            final_layer=final_layer,
            populate_edge=populate_edge,
            sum_over_edge=sum_over_edge,
            norm=norm,
            use_layer_norm=use_layer_norm,
            tensor_cores=tensor_cores,
            low_memory=low_memory,
            kernel=self.kernel,
        )
        self._entries = vendored_entries(self)
        self.reset_parameter()
        register_hooks(self)

    def extra_repr(self) -> str:
        s = self.se3
        return (
            f"variant={self.variant}, {s.fiber_in} -> {s.fiber_out}, final_layer="
            f"{s.final_layer}, populate_edge={s.populate_edge}, "
            f"fuse levels {tuple(map(str, s.levels))}"
        )

    def reset_parameter(self) -> None:
        """Their initialization as it takes effect: zero biases, Kaiming-normal radial hidden
        layers, zero radial last layers and final-layer weights (their LeCun re-draw of the
        other weights rebinds a local name only, so those keep the default draw)."""
        params = dict(self.named_parameters())
        with torch.no_grad():
            for key, e in self._entries.items():
                p = params[e.se3t]
                if "bias" in key:
                    nn.init.zeros_(p)
                elif p.dim() == 1 or "radial_func" not in key:
                    continue
                elif ".net.6." in key:
                    nn.init.zeros_(p)
                else:
                    nn.init.kaiming_normal_(p, nonlinearity="relu")
            final = self.se3.final
            weights = final.self_weights if isinstance(final, ConvSE3) else final.weights
            for w in weights.values():
                nn.init.zeros_(w)

    def forward(
        self,
        G,
        type_0_features: Tensor,
        type_1_features: Tensor | None = None,
        edge_features: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """``G``: a :class:`ResidueGraph` or DGLGraph (``edata["rel_pos"] [E, 3]``);
        ``type_0_features [N, l0_in, 1]``, ``type_1_features [N, l1_in, 3]``, ``edge_features
        [E, num_edge_features, 1]`` -> ``{"0": [N, l0_out, 1], "1": [N, l1_out, 3]}``."""
        graph, rel_pos = graph_and_positions(G)
        if self.autocast_off == "block":
            with torch.autocast(type_0_features.device.type, enabled=False):
                return self._forward(
                    graph, rel_pos, type_0_features, type_1_features, edge_features
                )
        return self._forward(graph, rel_pos, type_0_features, type_1_features, edge_features)

    def _forward(self, graph, rel_pos, x0, x1, edge) -> dict[str, Tensor]:
        dtype = next(self.parameters()).dtype
        N, E = graph.num_nodes, graph.num_edges
        s = self.se3
        want = {0: (N, s.fiber_in[0], 1)}
        if self.l1_in:
            want[1] = (N, self.l1_in, 3)
        feats = {0: x0, 1: x1} if self.l1_in else {0: x0}
        for d, shape in want.items():
            got = feats[d]
            if got is None or tuple(got.shape) != shape:
                shown = None if got is None else list(got.shape)
                raise ValueError(
                    f"SE3TransformerWrapper: type_{d}_features must be {list(shape)}, got {shown}"
                )
        F = s.fiber_edge[0] if s.fiber_edge else 0
        if edge is None and F == 0:
            edge = rel_pos.new_zeros(E, 0, 1)
        if edge is None or tuple(edge.shape) != (E, F, 1):
            shown = None if edge is None else list(edge.shape)
            raise ValueError(
                f"SE3TransformerWrapper: edge_features must be [{E}, {F}, 1], got {shown}"
            )
        if tuple(rel_pos.shape) != (E, 3):
            raise ValueError(
                f"SE3TransformerWrapper: rel_pos must be [{E}, 3], got {list(rel_pos.shape)}"
            )
        feats = {d: x.to(dtype) for d, x in feats.items()}
        out = s(graph, rel_pos, feats, edge.squeeze(-1).to(dtype))
        return {str(d): x for d, x in out.items()}

    def vendored_state_dict(self, *, grad: bool = False) -> dict[str, Tensor]:
        """The vendored module's state dict (keys relative to the wrapper, e.g.
        ``se3.graph_modules.0.to_key_value.conv_in.0.radial_func.net.0.weight``), detached
        copies; ``grad``: the parameters' gradients in the same layout (zeros where none)."""
        params = dict(self.named_parameters())
        out = {}
        for k, e in self._entries.items():
            p = params[e.se3t]
            v = p.detach()
            if grad:
                v = p.grad.detach() if p.grad is not None else torch.zeros_like(v)
            out[k] = e.to_nvidia(v).clone()
        return out
