"""The registry of the fused TFN's evaluations, and the choice among them.

Each evaluation of the same sums (module docstring of :mod:`se3t.nn.kernel`) registers one
:class:`Registered` entry at import: its name (:class:`se3t.choices.Evaluation`), the
``model.kernel`` values (:class:`se3t.choices.Kernel`) that may choose it, whether it can run
on given inputs and on this machine, how to apply it, its tile defaults and candidates and its
trial problem (what :class:`se3t.nn.tuning.KernelTuner` times). :func:`choose` walks the
entries in the order they rank; nothing here knows an evaluation by its module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from se3t.choices import Evaluation, Kernel
from se3t.nn.kernel_spec import KernelSpec

__all__ = ["Registered", "choose", "entry", "register", "registered"]


def _always(spec: KernelSpec, device: torch.device, dt: torch.dtype) -> str | None:
    return None


def _ready() -> bool:
    return True


@dataclass(frozen=True)
class Registered:
    """One evaluation of a fusion group.

    ``apply(spec, state, z, weight, basis, src, xs, share)`` returns the messages, one per
    output degree in ``spec.outs`` order. ``serves``: the ``model.kernel`` values that may
    choose it. ``owner``: the value that names it alone (a requested owner that cannot run
    these inputs is an error, not a fallback). ``rank``: lower is tried first.
    ``unsupported(spec, device, dtype)``: why it cannot run these inputs (None: it can).
    ``ready()``: whether this machine has it (a compiled library); an owner that is not ready
    falls back to the next entry that serves its value. ``shares_radial``: it takes ``z`` with
    one row per run of edges that share radial weights (:mod:`se3t.nn.sharing`).
    ``autocast``: it runs under the caller's autocast as plain autograd; the others get their
    inputs cast to the autocast dtype and run with autocast off. ``tiles``: its tile defaults;
    ``candidates``: ``{pass: [tiles]}`` its tuner tries, per pass of ``trial_problem(spec, E,
    H, dtype, device) -> {pass: run(tiles)}``; ``build()``: what identifies its compiled code
    (a new build is tuned anew).
    """

    name: Evaluation
    apply: Callable
    serves: frozenset[Kernel]
    rank: int
    owner: Kernel | None = None
    unsupported: Callable[[KernelSpec, torch.device, torch.dtype], str | None] = _always
    ready: Callable[[], bool] = _ready
    shares_radial: bool = False
    autocast: bool = False
    tiles: dict = field(default_factory=dict)
    candidates: dict[str, list[dict]] = field(default_factory=dict)
    trial_problem: Callable | None = None
    build: Callable[[], str] = str


_REGISTRY: dict[Evaluation, Registered] = {}


def register(evaluation: Registered) -> Registered:
    """Add ``evaluation`` to the registry (again under its name: the last one counts)."""
    _REGISTRY[evaluation.name] = evaluation
    return evaluation


def entry(name: Evaluation | str) -> Registered:
    try:
        return _REGISTRY[Evaluation(name)]
    except (KeyError, ValueError):
        raise ValueError(
            f"kernel: no evaluation {name!r} registered; have {sorted(_REGISTRY)}"
        ) from None


def registered() -> list[Registered]:
    """The entries, in the order :func:`choose` tries them."""
    return sorted(_REGISTRY.values(), key=lambda r: r.rank)


def choose(kernel: Kernel, spec: KernelSpec, device: torch.device, dt: torch.dtype) -> Evaluation:
    """The evaluation that runs ``spec`` on ``device`` in ``dt`` for ``model.kernel=kernel``:
    the first entry that serves ``kernel``, can run these inputs and is ready. A requested
    evaluation that cannot run these inputs raises a ValueError that says why."""
    for r in registered():
        if kernel not in r.serves:
            continue
        why = r.unsupported(spec, device, dt)
        if why is not None and r.owner is kernel:
            raise ValueError(why)
        if why is None and r.ready():
            return r.name
    raise ValueError(f"kernel: no evaluation of {kernel.value} runs {spec.ins} on {device} {dt}")
