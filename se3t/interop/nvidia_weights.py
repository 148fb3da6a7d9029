"""NVIDIA's state dicts in and out of :class:`se3t.interop.nvidia_model.NvidiaSE3Transformer`:
the key map, the radial rows' permutation and the Clebsch-Gordan signs
(:mod:`se3t.interop.nvidia`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from se3t.choices import NvidiaFuseLevel
from se3t.interop import _nvidia_cg
from se3t.interop.nvidia_model import (
    NvidiaSE3Transformer,
    NvidiaStateDictError,
    nv_order,
    nvidia_model,
)
from se3t.nn.conv import ConvSE3, Fusion
from se3t.so3.basis import clebsch_gordan, num_freq

__all__ = [
    "Entry",
    "conv_entries",
    "expected_shapes",
    "from_state_dict",
    "fuse_levels",
    "to_state_dict",
]


@dataclass(frozen=True)
class Entry:
    """Where one NVIDIA state-dict tensor lives in an se3t model, and its row transform."""

    se3t: str  # parameter name in the se3t model
    # se3t tensor rows = sign * NVIDIA tensor rows [perm] (radial last layers; else None)
    perm: Tensor | None = None
    sign: Tensor | None = None

    def to_se3t(self, v: Tensor) -> Tensor:
        if self.perm is None:
            return v
        return v[self.perm.to(v.device)] * self.sign.to(v.device, v.dtype)[:, None]

    def to_nvidia(self, v: Tensor) -> Tensor:
        if self.perm is None:
            return v
        v = v * self.sign.to(v.device, v.dtype)[:, None]
        return v[torch.argsort(self.perm.to(v.device))]


def _cg_sign(J: int, d_in: int, d_out: int) -> int:
    """+1 or -1: NVIDIA's ``Q_J`` over se3t's (see :mod:`se3t.interop._nvidia_cg`)."""
    ref = _nvidia_cg.REFERENCE.get((J, d_in, d_out))
    if ref is None:
        raise NotImplementedError(
            f"nvidia: NVIDIA's Clebsch-Gordan signs are recorded up to degree "
            f"{_nvidia_cg.MAX_DEGREE} (benchmarks/nvidia/cg_table.py); degrees {d_in} -> {d_out}"
        )
    k, value = ref
    mine = float(clebsch_gordan(J, d_in, d_out).flatten()[k])
    if abs(abs(mine) - abs(value)) > 1e-9:
        raise RuntimeError(
            f"nvidia: Clebsch-Gordan Q_{J} ({d_in} -> {d_out}) entry {k} is {mine}, NVIDIA's "
            f"is {value}: not the same tensor up to sign (e3nn changed its convention?)"
        )
    return 1 if mine * value > 0 else -1


def _radial_rows(conv: ConvSE3, g: int) -> tuple[Tensor, Tensor]:
    """``(perm, sign)`` with ``se3t_last[k] = sign[k] * nvidia_last[perm[k]]`` for group ``g``.

    NVIDIA's fused radial output is viewed as ``[C_out, C_in * F]`` with ``F`` running over
    the group's pairs (output degree outer, input degree inner, as its fused bases are
    stacked) and ``J`` within a pair; se3t stores one ``[C_out, C_in, J]`` block per pair.
    ``sign`` is NVIDIA's Clebsch-Gordan sign of each row's ``J``.
    """
    spec = conv.specs[g]
    F = sum(num_freq(di, do) for do, _ in spec.outs for di, _ in spec.ins)
    perm = torch.empty(spec.num_radial, dtype=torch.long)
    sign = torch.empty(spec.num_radial)
    f0 = 0
    for do, co in spec.outs:
        for di, ci in spec.ins:
            nf = num_freq(di, do)
            o = torch.arange(co).view(co, 1, 1)
            i = torch.arange(ci).view(1, ci, 1)
            j = torch.arange(nf).view(1, 1, nf)
            se = (spec.w_off[(di, do)] + (o * ci + i) * nf + j).flatten()
            perm[se] = (o * (ci * F) + i * F + f0 + j).flatten()
            js = torch.tensor([_cg_sign(abs(di - do) + q, di, do) for q in range(nf)])
            sign[se] = js.to(sign.dtype).expand(co, ci, nf).flatten()
            f0 += nf
    return perm, sign


def conv_entries(conv: ConvSE3, nv: str, se: str, ins: list, outs: list) -> dict[str, Entry]:
    """Entries of one convolution; ``ins``/``outs``: NVIDIA's fiber orders (``nv_order``)."""
    out: dict[str, Entry] = {}
    layer_norm = not isinstance(conv.radial[0].net[1], nn.Identity)
    di_order, do_order = [d for d, _ in ins], [d for d, _ in outs]
    if conv.fusion is Fusion.PAIRWISE:
        keys = [(di, do) for di in di_order for do in do_order]
        group = {(s.ins[0][0], s.outs[0][0]): g for g, s in enumerate(conv.specs)}
        order = [(f"conv.{di},{do}", group[(di, do)]) for di, do in keys]
    elif conv.fusion is Fusion.PER_OUTPUT:
        group = {s.outs[0][0]: g for g, s in enumerate(conv.specs)}
        order = [(f"conv_out.{do}", group[do]) for do in do_order]
    elif conv.fusion is Fusion.PER_INPUT:
        group = {s.ins[0][0]: g for g, s in enumerate(conv.specs)}
        order = [(f"conv_in.{di}", group[di]) for di in di_order]
    else:
        order = [("conv", 0)]
    for name, g in order:
        p, s = f"{nv}{name}.radial_func.net.", f"{se}radial.{g}."
        # NVIDIA's Sequential drops the absent layer norms, shifting the indices
        layers = [(0, 0), (1, 1), (3, 3), (4, 4)] if layer_norm else [(0, 0), (2, 3)]
        for i_nv, i_se in layers:
            for w in ("weight", "bias"):
                out[f"{p}{i_nv}.{w}"] = Entry(f"{s}net.{i_se}.{w}")
        last = 6 if layer_norm else 4
        perm, sign = _radial_rows(conv, g)
        out[f"{p}{last}.weight"] = Entry(f"{s}last.weight", perm, sign)
    if conv.self_interaction:
        for d in do_order:
            if str(d) in conv.self_weights:
                out[f"{nv}to_kernel_self.{d}"] = Entry(f"{se}self_weights.{d}")
    return out


def block_entries(
    blocks, nv: str, se: str, f_in, hidden, divs: dict[int, int], linear_order=None
) -> tuple[dict[str, Entry], int, list]:
    """NVIDIA's keys of the attention blocks (each with its norm) ``blocks``: NVIDIA's graph
    modules under ``nv``, se3t's blocks under ``se``, on NVIDIA-ordered fibers ``f_in`` and
    ``hidden`` with the value channels divided by ``divs[d]``. ``linear_order``: the key order
    of a LinearSE3's weights for its output fiber (default: the fiber's). Returns ``(entries,
    the next graph module's index, its input fiber)``."""
    out: dict[str, Entry] = {}
    idx = 0
    for i, (att, norm) in enumerate(blocks):
        # the fibers of NVIDIA's AttentionBlockSE3, in its Fiber order
        value = nv_order((d, c // divs[d]) for d, c in hidden)
        key = nv_order((d, c) for d, c in value if d in dict(f_in))
        kv = nv_order((d, c + dict(key).get(d, 0)) for d, c in value)
        s = f"{se}{i}."
        out |= conv_entries(
            att.to_key_value, f"{nv}{idx}.to_key_value.", f"{s}0.to_key_value.", f_in, kv
        )
        for part, fout in (("to_query", key), ("project", hidden)):
            for d in linear_order(fout) if linear_order else [d for d, _ in fout]:
                out[f"{nv}{idx}.{part}.weights.{d}"] = Entry(f"{s}0.{part}.weights.{d}")
        idx += 1
        if not isinstance(norm, nn.Identity):
            for w in ("weight", "bias"):
                out[f"{nv}{idx}.group_norm.{w}"] = Entry(f"{s}1.group_norm.{w}")
            idx += 1
        f_in = hidden
    return out, idx, f_in


def _entries(model: NvidiaSE3Transformer) -> dict[str, Entry]:
    """NVIDIA state-dict key -> where the tensor lives in ``model``, in NVIDIA's order."""
    nv = "transformer.graph_modules." if model.pooled else "graph_modules."
    t = model.transformer
    div = model.args["channels_div"]
    divs = {d: div for d, _ in model.nv_hidden}
    out, idx, f_in = block_entries(
        t.blocks, nv, "transformer.blocks.", model.nv_in, model.nv_hidden, divs
    )
    out |= conv_entries(t.conv_out, f"{nv}{idx}.", "transformer.conv_out.", f_in, model.nv_out)
    if model.pooled:
        for i in (0, 2):
            for w in ("weight", "bias"):
                out[f"mlp.{i}.{w}"] = Entry(f"mlp.{i}.{w}")
    return out


def expected_shapes(**kwargs) -> dict[str, tuple[int, ...]]:
    """NVIDIA's state-dict keys and shapes for these arguments (no weights needed)."""
    model = nvidia_model(**kwargs)
    params = dict(model.named_parameters())
    return {k: tuple(params[e.se3t].shape) for k, e in _entries(model).items()}


def _unwrap(state_dict) -> Mapping[str, Tensor]:
    if not isinstance(state_dict, Mapping):
        raise NvidiaStateDictError(
            f"nvidia: expected a state dict (mapping), got {type(state_dict).__name__}"
        )
    # a DLE training checkpoint ({'state_dict', 'optimizer_state_dict', 'epoch', ...})
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    if "model" in state_dict and "config" in state_dict and "model_code" in state_dict:
        raise NvidiaStateDictError(
            "nvidia: this is an se3t checkpoint (a run's last.pt or best.pt), not NVIDIA's: "
            "give it as --checkpoint (or the run folder), not --nvidia-checkpoint"
        )
    for k, v in state_dict.items():
        if not isinstance(v, Tensor):
            raise NvidiaStateDictError(
                f"nvidia: key {str(k)!r} holds a {type(v).__name__}, not a tensor: expected "
                "NVIDIA's model.state_dict() (or a DLE checkpoint holding it under 'state_dict')"
            )
    if state_dict and all(str(k).startswith("module.") for k in state_dict):
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}  # DDP
    return state_dict


def from_state_dict(state_dict, **kwargs) -> NvidiaSE3Transformer:
    """se3t model computing NVIDIA's function, with every tensor of ``state_dict`` loaded.

    ``state_dict``: NVIDIA's ``model.state_dict()`` or a DLE training checkpoint holding it
    under ``'state_dict'``. ``kwargs``: NVIDIA's model arguments (see the module docstring);
    fibers as ``{degree: channels}``. The model takes the state dict's floating dtype.
    """
    model = nvidia_model(**kwargs)
    sd = _unwrap(state_dict)
    entries = _entries(model)
    params = dict(model.named_parameters())
    unknown = [k for k in sd if k not in entries]
    if unknown:
        raise NvidiaStateDictError(
            f"nvidia: unknown key {unknown[0]!r} (shape {list(sd[unknown[0]].shape)}) in the "
            f"state dict: NVIDIA's model for these arguments has no such parameter"
            + (f" ({len(unknown)} unknown keys in all)" if len(unknown) > 1 else "")
        )
    missing = [k for k in entries if k not in sd]
    if missing:
        k = missing[0]
        raise NvidiaStateDictError(
            f"nvidia: missing key {k!r}: NVIDIA's model expects shape "
            f"{list(params[entries[k].se3t].shape)}"
            + (f" ({len(missing)} missing keys in all)" if len(missing) > 1 else "")
        )
    for k, e in entries.items():
        want, got = tuple(params[e.se3t].shape), tuple(sd[k].shape)
        if want != got:
            raise NvidiaStateDictError(
                f"nvidia: key {k!r} has shape {list(got)}, NVIDIA's model expects {list(want)}"
            )
    dtypes = {v.dtype for v in sd.values() if v.is_floating_point()}
    if len(dtypes) == 1:
        model.to(dtypes.pop())
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, e in entries.items():
            v = sd[k]
            params[e.se3t].copy_(e.to_se3t(v))
    return model


def to_state_dict(model: NvidiaSE3Transformer, *, grad: bool = False) -> dict[str, Tensor]:
    """NVIDIA's state dict of ``model`` (detached copies, NVIDIA's keys and layouts).

    ``grad``: the parameters' gradients instead (zeros where a parameter has none), in the
    same keys and layouts: what NVIDIA's ``p.grad`` holds after the same backward pass.
    """
    if not isinstance(model, NvidiaSE3Transformer):
        raise TypeError(f"nvidia.to_state_dict: expected NvidiaSE3Transformer, got {type(model)}")
    params = dict(model.named_parameters())
    out = {}
    for k, e in _entries(model).items():
        v = params[e.se3t].detach()
        if grad:
            g = params[e.se3t].grad
            v = g.detach() if g is not None else torch.zeros_like(v)
        out[k] = e.to_nvidia(v).clone()
    return out


# the level of NVIDIA's ConvSE3FuseLevel that computes each se3t fusion, by its NVIDIA name
_LEVEL_NAMES = {
    Fusion.FULL: NvidiaFuseLevel.FULL.name,
    Fusion.PER_OUTPUT: NvidiaFuseLevel.PARTIAL.name,
    Fusion.PER_INPUT: NvidiaFuseLevel.PARTIAL.name,
    Fusion.PAIRWISE: NvidiaFuseLevel.NONE.name,
}


def fuse_levels(model: NvidiaSE3Transformer) -> dict[str, str]:
    """NVIDIA's module name of every convolution -> the fuse level it uses (``used_fuse_level``
    of NVIDIA's ``ConvSE3``: "FULL", "PARTIAL" or "NONE")."""
    nv = "transformer.graph_modules." if model.pooled else "graph_modules."
    out, idx = {}, 0
    for att, norm in model.transformer.blocks:
        out[f"{nv}{idx}.to_key_value"] = _LEVEL_NAMES[att.to_key_value.fusion]
        idx += 1 if isinstance(norm, nn.Identity) else 2
    out[f"{nv}{idx}"] = _LEVEL_NAMES[model.transformer.conv_out.fusion]
    return out
