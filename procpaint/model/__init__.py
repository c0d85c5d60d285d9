"""The unified Mixture-of-Transformers model, attention backends, embeddings and latent codecs."""

from procpaint.model.attention import AttnContext, build_attention, resolve_backend
from procpaint.model.codecs import (
    DCTCodec,
    LatentCodec,
    PixelCodec,
    VAECodec,
    build_codec,
    measure_latent_stats,
)
from procpaint.model.config import PRESETS, ModelConfig, model_config
from procpaint.model.factory import (
    apply_activation_checkpointing,
    apply_compile,
    build_model,
    expected_num_parameters,
    flops_per_token,
    matmul_peak_flops,
    num_parameters,
)
from procpaint.model.layers import Routing
from procpaint.model.transformer import ModelOutput, ProcPaintModel

__all__ = [
    "PRESETS", "AttnContext", "DCTCodec", "LatentCodec", "ModelConfig", "ModelOutput", "PixelCodec",
    "ProcPaintModel",
    "Routing", "VAECodec", "apply_activation_checkpointing", "apply_compile", "build_attention",
    "build_codec", "build_model", "expected_num_parameters", "flops_per_token", "matmul_peak_flops",
    "measure_latent_stats", "model_config", "num_parameters", "resolve_backend",
]
