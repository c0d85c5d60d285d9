"""Fused ops with pure-PyTorch references: packing masks (``packing``) and rectified-flow ops."""
