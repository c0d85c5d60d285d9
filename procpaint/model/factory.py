"""Building the model and the separate steps applied to it (torchtitan's ``parallelize`` style).

``build_model`` constructs; ``apply_activation_checkpointing`` and ``apply_compile`` transform an
existing model in place and are called by the training side (the LightningModule's
``configure_model``), never by the model itself. ``flops_per_token`` feeds MFU.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import torch
from torch import nn

from procpaint.model.codecs import build_codec
from procpaint.model.config import ModelConfig
from procpaint.model.transformer import ProcPaintModel

logger = logging.getLogger(__name__)


def build_model(cfg: ModelConfig, *, device: torch.device | str | None = None, load_init: bool = True,
                parallelize: Callable[[ProcPaintModel], object] | None = None) -> ProcPaintModel:
    """A freshly initialised :class:`ProcPaintModel` on ``device`` (default CPU).

    The model is constructed on the meta device and materialised once with
    :meth:`ProcPaintModel.init_weights`, which skips ``nn.Linear``'s own init that would be
    overwritten anyway (half the build time of ``base`` on CPU). The codec (a VAE's pretrained
    weights) is built for real and attached afterwards. ``device="meta"`` allocates nothing (shape
    and parameter-count checks; the VAE is not loaded); FSDP materialises such a model with
    ``to_empty`` then ``init_weights``. ``cfg.init_from`` (a BAGEL-format directory) is loaded
    after initialisation (:func:`procpaint.model.bagel_io.load_bagel`); ``load_init=False`` takes
    only its autoencoder (a checkpoint about to load its own, fine-tuned weights).

    ``parallelize(model)`` runs on the meta model before anything is allocated (activation
    checkpointing, compile, :func:`procpaint.model.parallel.apply_fsdp`): a sharded model is then
    materialised and initialised shard by shard, and ``init_from`` is copied into each rank's shards.
    """
    target = torch.device(device) if device is not None else torch.device("cpu")
    # Parameter-free stand-in with the right latent_dim: a VAE without a path is an unloaded placeholder.
    placeholder = build_codec(dataclasses.replace(cfg, vae_path=None))
    with torch.device("meta"):
        model = ProcPaintModel(cfg, codec=placeholder)
    if parallelize is not None:
        parallelize(model)
    if target.type == "meta":
        return model
    model.to_empty(device=target)
    if parallelize is not None:
        _init_shards(model, target)
    else:
        model.init_weights()
    model.codec = build_codec(cfg).to(target)
    if cfg.init_from:
        from procpaint.model.bagel_io import load_bagel

        load_bagel(model, cfg.init_from, weights=load_init)
        model.codec.to(target)                 # its ae.safetensors, when the codec took it
    return model


def _init_shards(model: ProcPaintModel, device: torch.device) -> None:
    """``init_weights`` on a sharded model, each rank drawing from its own seed (the process seed
    plus the rank). DTensor random ops on a CPU mesh draw every shard from the local generator, so
    with one seed all shards of a weight would be the same numbers (rows repeating every 1/world);
    on CUDA, DTensor's RNG tracker takes over and gives each shard its slice of one stream. Same
    distribution as an unsharded init, not the same numbers (``init_from`` overwrites them anyway)."""
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(torch.initial_seed() + 1_000_003 * rank)
        model.init_weights()


def num_parameters(model: nn.Module, *, trainable_only: bool = False, exclude_embeddings: bool = False
                   ) -> int:
    """Distinct parameters (a tied LM head counts once). ``exclude_embeddings`` drops the token
    embedding and untied LM head (the usual "non-embedding" count)."""
    seen, total = set(), 0
    skip = set()
    if exclude_embeddings and isinstance(model, ProcPaintModel):
        skip.add(id(model.embed_tokens.weight))
        if model.output is not None:
            skip.add(id(model.output.weight))
    for p in model.parameters():
        if id(p) in seen or id(p) in skip or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def expert_layer_parameters(cfg: ModelConfig) -> int:
    """Parameters of one expert in one layer (q|k|v|o, qk-norms, two pre-norms, SwiGLU)."""
    d, hd, h, hkv, f = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size
    attn = d * (h + 2 * hkv) * hd + h * hd * d + ((h + 2 * hkv) * hd if cfg.qkv_bias else 0)
    norms = 2 * d + (2 * hd if cfg.qk_norm else 0)
    return attn + norms + 3 * d * f


def expected_num_parameters(cfg: ModelConfig) -> int:
    """Closed-form parameter count of :class:`ProcPaintModel` (codec weights excluded; the ViT
    path's included when ``cfg.vit``)."""
    experts = 2 if cfg.mot else 1
    d, v, dl, fd = cfg.hidden_size, cfg.vocab_size, cfg.latent_dim, cfg.timestep_freq_dim
    total = cfg.num_layers * experts * expert_layer_parameters(cfg)
    total += experts * d                                     # final norms
    total += v * d * (1 if cfg.tie_word_embeddings else 2)   # embedding (+ untied head)
    total += (dl * d + d) + (d * dl + dl)                    # vae2llm, llm2vae
    total += (fd * d + d) + (d * d + d)                      # timestep MLP
    if cfg.vit:
        total += vit_parameters(cfg)
    return total


def vit_parameters(cfg: ModelConfig) -> int:
    """Parameters of the understanding path (``cfg.vit``): encoder, position table, connector."""
    w, f, p, s, d = (cfg.vit_hidden_size, cfg.vit_intermediate_size, cfg.vit_patch_size,
                     cfg.vit_max_patches_per_side, cfg.hidden_size)
    layer = 4 * (w * w + w) + (w * f + f) + (f * w + w) + 2 * 2 * w      # q|k|v|o, MLP, two LayerNorms
    encoder = cfg.vit_num_layers * layer + (3 * p * p * w + w) + s * s * w + 2 * w
    return encoder + (w * d + d) + (d * d + d)                           # + connector


def vit_flops_per_patch(cfg: ModelConfig, patches_per_image: float, *, training: bool = True) -> float:
    """Model FLOPs per ViT patch through encoder and connector, :func:`flops_per_token`'s convention
    (each image attends only to itself: ``patches_per_image`` keys). The patch then enters the
    language model as one understanding token, counted by :func:`flops_per_token`."""
    w, f, p, d = cfg.vit_hidden_size, cfg.vit_intermediate_size, cfg.vit_patch_size, cfg.hidden_size
    matmul = cfg.vit_num_layers * (4 * w * w + 2 * w * f) + 3 * p * p * w + w * d + d * d
    attn = 2 * cfg.vit_num_layers * w * patches_per_image
    fwd = 2 * matmul + 2 * attn
    return 3 * fwd if training else fwd


def flops_per_token(cfg: ModelConfig, context_len: float, *, training: bool = True,
                    lm_head_fraction: float = 1.0) -> float:
    """Model FLOPs per token of a pass (PaLM appendix B convention, 2 FLOPs per multiply-add).

    Each token runs through ONE expert, so the matmul term uses one expert's weights
    (``2 * params``); attention adds ``4 * layers * heads * head_dim * context_len`` (QK^T and
    AV), where ``context_len`` is the mean number of keys a query attends (``mask.sum() / L``
    for a pack; ~L/2 for causal text). The LM head runs only on CE positions: pass their share
    as ``lm_head_fraction``. ``training`` multiplies by 3 (forward + backward = 2 x forward).
    Norms, RoPE, softmax and embeddings' gathers are ignored, as usual for MFU. ViT patches add
    :func:`vit_flops_per_patch` each before they enter as tokens.
    """
    d = cfg.hidden_size
    matmul = cfg.num_layers * (expert_layer_parameters(cfg) - 2 * d - 2 * cfg.head_dim)
    matmul += lm_head_fraction * cfg.vocab_size * d
    attn = 2 * cfg.num_layers * cfg.num_heads * cfg.head_dim * context_len
    fwd = 2 * matmul + 2 * attn
    return 3 * fwd if training else fwd


def matmul_peak_flops(device: torch.device | str, dtype: torch.dtype = torch.float32, *,
                      size: int | None = None, repeats: int = 5) -> float:
    """Measured FLOP/s of this device: best of ``repeats`` square ``size``^3 matmuls in ``dtype``
    (1024 on CPU, 8192 on CUDA by default) after one warm-up: the peak ``perf/mfu`` is measured
    against (a vendor's datasheet number assumes clocks and kernels a run may not get)."""
    import time

    device = torch.device(device)
    n = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:                                                  # the first call is a warm-up
            best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def apply_activation_checkpointing(model: ProcPaintModel, *, every: int = 1) -> ProcPaintModel:
    """Wrap every ``every``-th decoder layer in non-reentrant activation checkpointing (in place).

    Uses torch's ``checkpoint_wrapper`` (as torchtitan), whose state-dict hooks strip the wrapper
    prefix, so checkpoints load with or without checkpointing.
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    if every < 1:
        raise ValueError(f"activation checkpointing: every must be >= 1, got {every}")
    for i, layer in enumerate(model.layers):
        if i % every == 0:
            # preserve_rng_state=False: the layers draw no random numbers (no dropout).
            model.layers[i] = checkpoint_wrapper(layer, checkpoint_impl=CheckpointImpl.NO_REENTRANT,
                                                 preserve_rng_state=False)
    logger.info("activation checkpointing on %d of %d layers", len(range(0, len(model.layers), every)),
                len(model.layers))
    return model


def apply_compile(model: ProcPaintModel, **compile_kwargs) -> ProcPaintModel:
    """``torch.compile`` each decoder layer in place (``nn.Module.compile``: parameter names and
    state-dict keys are unchanged). Per-layer rather than whole-model compilation keeps compile
    time flat in depth and leaves the data-dependent embedding/gather code eager."""
    for layer in model.layers:
        layer.compile(**compile_kwargs)
    logger.info("compiled %d decoder layers with %s", len(model.layers), compile_kwargs or "defaults")
    return model
