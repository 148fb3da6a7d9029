"""Equivariant layers on se3t's graphs: TFN convolution (fusion levels), attention, norm,
linear, pooling, radial profiles and graph ops."""

from se3t.choices import Fusion
from se3t.nn.attention import AttentionBlockSE3, AttentionSE3
from se3t.nn.conv import ConvSE3, pairwise_reference
from se3t.nn.graph_ops import edge_softmax, gather, scatter_max, scatter_mean, scatter_sum
from se3t.nn.linear import LinearSE3
from se3t.nn.norm import NormSE3
from se3t.nn.pooling import GraphPooling
from se3t.nn.radial import RadialProfile

__all__ = [
    "AttentionBlockSE3",
    "AttentionSE3",
    "ConvSE3",
    "Fusion",
    "GraphPooling",
    "LinearSE3",
    "NormSE3",
    "RadialProfile",
    "edge_softmax",
    "gather",
    "pairwise_reference",
    "scatter_max",
    "scatter_mean",
    "scatter_sum",
]
