"""Models: the SE(3)-Transformer and its pooled property head; ``build(model_cfg)``."""

from se3t.models.transformer import SE3Transformer, SE3TransformerPooled, build

__all__ = ["SE3Transformer", "SE3TransformerPooled", "build"]
