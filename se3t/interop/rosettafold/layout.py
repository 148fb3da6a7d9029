"""The vendored state-dict layout: which se3t parameter each vendored key names, and the hooks
that make ``state_dict()`` / ``load_state_dict()`` speak it under any prefix."""

from __future__ import annotations

from torch import nn

from se3t.interop.nvidia import Entry, block_entries, conv_entries, nv_order


def register_hooks(module: nn.Module) -> None:
    """The state-dict hooks that speak the vendored layout (public names from torch 2.5 on)."""
    post = getattr(module, "register_state_dict_post_hook", None)
    if post is not None:
        post(_to_vendored_hook)
    else:
        module._register_state_dict_hook(_to_vendored_hook)
    pre = getattr(module, "register_load_state_dict_pre_hook", None)
    if pre is not None:
        pre(_from_vendored_hook)
    else:
        module._register_load_state_dict_pre_hook(_from_vendored_hook, with_module=True)


def _to_vendored_hook(module: nn.Module, state_dict, prefix, local_metadata):
    """state_dict(): se3t's parameter names -> the vendored keys and layouts, under ``prefix``."""
    values = {}
    for key, e in module._entries.items():
        values[key] = state_dict.pop(prefix + e.se3t)
    for key, e in module._entries.items():
        v = values[key]
        state_dict[prefix + key] = e.to_nvidia(v) if e.perm is not None else v


def _from_vendored_hook(
    module: nn.Module,
    state_dict,
    prefix,
    local_metadata,
    strict,
    missing_keys,
    unexpected_keys,
    error_msgs,
):
    """load_state_dict(): the vendored keys under ``prefix`` -> se3t's names and layouts (a
    key already in se3t's names loads as is)."""
    params = dict(module.named_parameters())
    for key, e in module._entries.items():
        name = prefix + key
        if name not in state_dict:
            continue
        v = state_dict.pop(name)
        want = tuple(params[e.se3t].shape)
        if tuple(v.shape) != want:
            error_msgs.append(
                f"size mismatch for {name}: the checkpoint has {list(v.shape)}, the "
                f"{module.variant} block with these arguments has {list(want)}"
            )
            continue
        state_dict[prefix + e.se3t] = e.to_se3t(v)


def _linear_order(fiber: list[tuple[int, int]]) -> list[str]:
    """The vendored LinearSE3's key order: it builds its ParameterDict from a plain dict, which
    torch's ParameterDict.update inserts in sorted key order."""
    return sorted(str(d) for d, _ in fiber)


def vendored_entries(w: nn.Module) -> dict[str, Entry]:
    """Vendored state-dict key (relative to the wrapper) -> where it lives in ``w``, in the
    vendored order (NVIDIA's Fiber orders its ModuleDicts by channels)."""
    s = w.se3
    nv = "se3.graph_modules."
    hidden = nv_order(s.fiber_hidden.items())
    out, idx, f_in = block_entries(
        s.blocks,
        nv,
        "se3.blocks.",
        nv_order(s.fiber_in.items()),
        hidden,
        s.channels_div,
        _linear_order,
    )
    f_out = nv_order(s.fiber_out.items())
    if s.final_layer == "conv":
        out |= conv_entries(s.final, f"{nv}{idx}.", "se3.final.", f_in, f_out)
    else:
        for d in _linear_order(f_out):
            out[f"{nv}{idx}.weights.{d}"] = Entry(f"se3.final.weights.{d}")
    return out
