"""Fused ops with pure-PyTorch references: attention masks of packed sequences (``masks``) and
rectified-flow ops (``flow``)."""
