from pathlib import Path

import torch

from se3t.eval.roofline import conv_flops, machine, model_step_flops, sgemm_gflops
from se3t.models.transformer import SE3TransformerPooled
from se3t.nn import ConvSE3
from se3t.so3 import Fiber


def test_conv_flops_counts_radial_mlp_basis_and_contraction():
    # one pair 1 -> 1 (num_freq 3), 2 channels each way, radial MLP 5 -> 4 -> 4 -> 2*2*3
    conv = ConvSE3(Fiber({1: 2}), Fiber({1: 2}), Fiber({0: 4}), max_degree=1, radial_hidden=4)
    E, N = 10, 4
    mlp = 2 * E * (5 * 4 + 4 * 4) + 2 * E * 4 * 12
    t = 2 * E * 3 * 3 * 3 * 2  # (2 d_in + 1) num_freq (2 d_out + 1) C_i
    contraction = 2 * E * 2 * 2 * 3 * 3  # C_o C_i num_freq (2 d_out + 1)
    assert conv_flops(conv, E, N) == mlp + t + contraction
    si = ConvSE3(Fiber({1: 2}), Fiber({1: 2}), max_degree=1, radial_hidden=4, self_interaction=True)
    assert conv_flops(si, E, N) - conv_flops(conv, E, N) == 2 * N * 2 * 2 * 3 - 2 * E * 4 * 4


def test_model_step_is_three_forward_passes_of_its_convolutions():
    model = SE3TransformerPooled(num_layers=1, channels=4, num_heads=2)
    convs = [model.transformer.blocks[0][0].to_key_value, model.transformer.conv_out]
    assert model_step_flops(model, 30, 12) == 3 * sum(conv_flops(c, 30, 12) for c in convs)


def test_roofline_measures_and_machine_names_the_isa():
    assert sgemm_gflops(128, repeats=2) > 0
    info = machine()
    assert set(info) == {"cpu", "isa", "load"}
    flags = Path("/proc/cpuinfo").read_text()
    if " avx2" in flags:
        assert "avx2" in info["isa"].split()
    assert torch.get_num_threads() >= 1
