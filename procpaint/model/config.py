"""Model configuration: one dataclass plus named presets (DiT/torchtitan style registry).

Plain dataclasses, no OmegaConf or Lightning here: train/ and procpaint/training/ translate the
``model`` config group into a :class:`ModelConfig` via :func:`model_config`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 0                  # set from the tokenizer at build time (0 = not yet known)
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4                # grouped-query attention when < num_heads
    intermediate_size: int = 768         # SwiGLU hidden size
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    mot: bool = True                     # two experts (understanding / generation); False: dense
    qk_norm: bool = True
    tie_word_embeddings: bool = True
    codec: str = "pixel"                 # "pixel" (patchified normalised pixels) | "dct" | "vae"
    dct_keep: int | None = None          # codec="dct": DCT coefficients kept per channel, lowest
                                         # frequencies first (None: all patch_size**2, exact)
    vae_path: str | None = None          # local diffusers AutoencoderKL directory (codec="vae")
    latent_channels: int = 3             # channels of the codec's latent image (3 for pixels)
    latent_downsample: int = 1           # pixels per latent pixel (1 for pixels, 8 for a FLUX VAE)
    patch_size: int = 2                  # latent pixels per side of one latent token
    max_latent_size: int = 64            # max latent tokens per side (2-D pos-embed table)
    timestep_freq_dim: int = 256         # sinusoidal features before the timestep MLP
    attn_backend: str = "auto"           # "auto" | "sdpa" | "flex" | "xformers" | "flash"
    init_std: float = 0.02
    qkv_bias: bool = False               # bias on the q/k/v projections (Qwen2 / BAGEL have it)
    timestep_scale: float = 1000.0       # t in [0, 1] is multiplied by this before the sinusoid
                                         # (DiT/FLUX convention; BAGEL feeds raw t: 1.0)
    sincos_order: str = "row_col"        # 2-D sin-cos halves: "row_col" | "col_row" (MAE / BAGEL table)
    init_from: str | None = None         # BAGEL-format directory whose weights the build loads
                                         # (procpaint.model.bagel_io); shapes must match the preset
    # Per-channel statistics of the codec's latent image, measured on the training data
    # (codecs.measure_latent_stats); the codec maps z -> (z - mean) / std so latents meet unit
    # noise at unit scale. None: identity (what checkpoints without statistics were trained with).
    latent_mean: tuple[float, ...] | None = None
    latent_std: tuple[float, ...] | None = None
    # What ``llm2vae`` outputs. "velocity": v = noise - clean directly (BAGEL). "clean": the clean
    # latent x0, turned into v = (z_t - x0) / max(t, prediction_t_min) so the loss, the sampler and
    # CFG still work on velocities (x-prediction with a v-loss, "Back to Basics", Li & He 2025): clean
    # images lie on a low-dimensional manifold, noise does not, so a head narrower than a latent
    # token's noise can still predict its clean value.
    prediction: str = "velocity"
    prediction_t_min: float = 0.05
    # The understanding path for images (procpaint.model.vit): a SigLIP encoder over 2-D patch grids
    # (NaViT), a connector to hidden_size and a 2-D sin-cos position table. False: none of its
    # modules exist (the state dict is the LLM's alone). The defaults are a small encoder for the
    # procedural world; bagel-7b sets SigLIP-so400m's shapes.
    vit: bool = False
    vit_hidden_size: int = 256
    vit_num_layers: int = 4              # BAGEL: so400m's 27 minus the last (26)
    vit_num_heads: int = 4
    vit_intermediate_size: int = 1024    # GELU(tanh) MLP hidden size
    vit_patch_size: int = 8              # pixels per side of a patch (SigLIP-so400m: 14)
    vit_max_patches_per_side: int = 16   # position tables: this many patches per side (BAGEL: 70)
    vit_layer_norm_eps: float = 1e-6

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"model.hidden_size ({self.hidden_size}) must be divisible by "
                             f"model.num_heads ({self.num_heads})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"model.num_heads ({self.num_heads}) must be divisible by "
                             f"model.num_kv_heads ({self.num_kv_heads})")
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError("model head dim (hidden_size / num_heads) must be even for RoPE")
        if self.codec not in ("pixel", "dct", "vae"):
            raise ValueError(f"model.codec must be 'pixel', 'dct' or 'vae', got {self.codec!r}")
        if self.dct_keep is not None and not 1 <= self.dct_keep <= self.patch_size**2:
            raise ValueError(f"model.dct_keep must be in [1, patch_size**2 = {self.patch_size**2}], "
                             f"got {self.dct_keep}")
        if self.timestep_scale <= 0:
            raise ValueError(f"model.timestep_scale must be > 0, got {self.timestep_scale}")
        if self.attn_backend not in ("auto", "sdpa", "flex", "xformers", "flash"):
            raise ValueError(f"model.attn_backend unknown: {self.attn_backend!r}")
        if self.sincos_order not in ("row_col", "col_row"):
            raise ValueError(f"model.sincos_order must be 'row_col' or 'col_row', got {self.sincos_order!r}")
        if self.prediction not in ("velocity", "clean"):
            raise ValueError(f"model.prediction must be 'velocity' or 'clean', got {self.prediction!r}")
        if not 0.0 < self.prediction_t_min < 1.0:
            raise ValueError(f"model.prediction_t_min must be in (0, 1), got {self.prediction_t_min}")
        for key in ("vit_hidden_size", "vit_num_layers", "vit_num_heads", "vit_intermediate_size",
                    "vit_patch_size", "vit_max_patches_per_side"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        if self.vit_hidden_size % self.vit_num_heads:
            raise ValueError(f"model.vit_hidden_size ({self.vit_hidden_size}) must be divisible by "
                             f"model.vit_num_heads ({self.vit_num_heads})")
        for key in ("latent_mean", "latent_std"):
            v = getattr(self, key)
            if v is None:
                continue
            v = tuple(float(x) for x in v)            # JSON gives lists; keep the config hashable
            object.__setattr__(self, key, v)
            if len(v) != self.stat_channels:
                raise ValueError(f"model.{key} has {len(v)} values, the {self.codec} codec standardises "
                                 f"{self.stat_channels} channels")
        if (self.latent_mean is None) != (self.latent_std is None):
            raise ValueError("model.latent_mean and model.latent_std are set together or not at all")
        if self.latent_std is not None and not all(s > 0 for s in self.latent_std):
            raise ValueError(f"model.latent_std must be positive, got {self.latent_std}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def latent_dim(self) -> int:
        """Channels of one latent token: latent_channels * patch_size**2 (BAGEL: 16 * 2 * 2); with
        ``codec="dct"``, latent_channels * the coefficients kept."""
        if self.codec == "dct":
            return self.latent_channels * (self.dct_keep or self.patch_size**2)
        return self.latent_channels * self.patch_size**2

    @property
    def stat_channels(self) -> int:
        """Entries of ``latent_mean`` / ``latent_std``: one per latent-image channel, or with
        ``codec="dct"`` one per token channel (every frequency has its own scale)."""
        return self.latent_dim if self.codec == "dct" else self.latent_channels

    @property
    def pixels_per_token(self) -> int:
        """Image pixels per side covered by one latent token."""
        return self.latent_downsample * self.patch_size


_DEBUG = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                     timestep_freq_dim=64, max_latent_size=16)

PRESETS: dict[str, ModelConfig] = {
    # CI: a forward/backward in milliseconds.
    "debug": _DEBUG,
    # CI of the ViT understanding path: debug with a one-layer ViT of 4 px patches.
    "debug-vit": replace(_DEBUG, vit=True, vit_hidden_size=32, vit_num_layers=1, vit_num_heads=2,
                         vit_intermediate_size=64, vit_patch_size=4, vit_max_patches_per_side=16),
    # The CPU default of `python train/fit.py`.
    "small": ModelConfig(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=4,
                         intermediate_size=768, max_latent_size=32),
    # A GPU research scale.
    "base": ModelConfig(hidden_size=1024, num_layers=16, num_heads=16, num_kv_heads=8,
                        intermediate_size=2816, max_latent_size=64),
    # Qwen2-7B dimensions as in BAGEL-7B-MoT (instantiate on the meta device for shape checks).
    "bagel-7b": ModelConfig(vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28,
                            num_kv_heads=4, intermediate_size=18944, rope_theta=1_000_000.0,
                            tie_word_embeddings=False, codec="vae", latent_channels=16,
                            latent_downsample=8, patch_size=2, max_latent_size=64,
                            qkv_bias=True, timestep_scale=1.0, sincos_order="col_row",
                            # SigLIP-so400m-14 at 980 px as BAGEL builds it (one layer dropped)
                            vit=True, vit_hidden_size=1152, vit_num_layers=26, vit_num_heads=16,
                            vit_intermediate_size=4304, vit_patch_size=14, vit_max_patches_per_side=70),
}


def model_config(preset: str = "small", **overrides) -> ModelConfig:
    """A preset with the given fields replaced; overrides whose value is None are ignored."""
    if preset not in PRESETS:
        raise ValueError(f"model.preset {preset!r} unknown; choose from {sorted(PRESETS)}")
    return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
