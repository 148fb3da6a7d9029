"""A checkpoint that only code execution could load is refused, and the message never passes
on torch's advice to retry with weights_only=False."""

from __future__ import annotations

import os

import pytest
import torch

from se3t.errors import InputError
from se3t.train.checkpoint import load_checkpoint


class _Payload:
    """Unpickling this runs ``touch MARKER``: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_checkpoint_is_refused_without_dangerous_advice(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"format": "x", "model": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(InputError) as err:
        load_checkpoint(tmp_path / "evil.pt")
    msg = str(err.value)
    assert "evil.pt" in msg and "system" in msg and "weights_only" not in msg
    assert not marker.exists()  # nothing ran


def test_a_garbage_file_is_named(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"junk\.pt.*not a readable torch checkpoint") as err:
        load_checkpoint(tmp_path / "junk.pt")
    assert "weights_only" not in str(err.value)
