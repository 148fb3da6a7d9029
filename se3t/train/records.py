"""What a run writes besides its checkpoints: ``metrics.jsonl`` (one JSON record per line) and
``train.log`` (the ``se3t.train`` logger, also on stderr)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from se3t.io import write_text
from se3t.train.guards import strict_record

__all__ = ["MetricsWriter", "log_to"]


class MetricsWriter:
    """``metrics.jsonl``: one JSON object per line, flushed per line; rank 0 only."""

    def __init__(self, path: Path, enabled: bool, tensorboard: bool = False) -> None:
        self.path, self.enabled, self.fh = path, enabled, None
        self.tb = None
        if enabled and tensorboard:  # the package's presence is checked in check_inputs
            # deferred: tensorboard is optional, imported only when train.tensorboard asks
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(path.parent / "tensorboard"))

    def truncate(self, step: int, epoch: int) -> None:
        """Drop the records written after the checkpoint a resumed run starts from."""
        if not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by kill -9
            same = r["step"] == step and (r["kind"] in ("step", "val") or r["epoch"] < epoch)
            if r["step"] < step or same:
                keep.append(line)
        write_text(self.path, "".join(k + "\n" for k in keep))

    def write(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(self.path, "a")  # noqa: SIM115 (kept open for the run)
        # strict JSON: a non-finite value is null, flagged under "nonfinite" (se3t.train.guards)
        self.fh.write(json.dumps(strict_record(rec), allow_nan=False) + "\n")
        self.fh.flush()
        if self.tb is not None:
            for key, value in rec.items():
                if key in ("kind", "epoch", "step", "time"):
                    continue
                values = value if isinstance(value, dict) else {"": value}
                for target, v in values.items():
                    if isinstance(v, bool) or not isinstance(v, (int, float)):
                        continue  # scalars only (device_name is text; null when non-finite)
                    tag = f"{rec['kind']}/{key}" + (f"/{target}" if target else "")
                    self.tb.add_scalar(tag, v, rec["step"])

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def log_to(path: Path) -> None:
    """Log se3t.train to ``path`` (appending across resumes) and to stderr."""
    root = logging.getLogger("se3t.train")
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        if getattr(h, "_se3t", False):
            root.removeHandler(h)
            h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    for h in (logging.FileHandler(path), logging.StreamHandler(sys.stderr)):
        h.setFormatter(fmt)
        h._se3t = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.propagate = False
