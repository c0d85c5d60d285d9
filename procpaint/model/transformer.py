"""The unified interleaved model: text + latent tokens through one Mixture-of-Transformers stack.

Structure follows BAGEL (``Bagel`` + ``Qwen2MoTModel``), written afresh for ``PackedBatch``:

    text ids ----- embed_tokens ------------------------------+
                                                              +--> (L, D) --> MoT layers --> per-expert
    images -> codec -> clean latents -> z_t (noised copies)   |       final norm --> lm_head at ce_indexes
              -> vae2llm + timestep emb + 2-D sincos pos -----+                  --> llm2vae at noised latents
    ViT patches -> ViT -> connector + 2-D sincos -------------+   (cfg.vit: :meth:`embed_vit`; the
                                                                   understanding expert, like text)

Pieces inference needs are public: :meth:`ProcPaintModel.embed_text`, :meth:`embed_latents`,
:meth:`embed`, :meth:`prepare` (routing + mask), :meth:`forward_hidden` (with optional per-layer
past k/v and ``use_cache``), :meth:`lm_head` and :meth:`predict_velocity`.

Weight init (:meth:`ProcPaintModel.reset_parameters`, also the FSDP ``configure_model`` hook after
``to_empty``): token embedding and untied LM head N(0, init_std); per-expert q|k|v, gate, up
N(0, init_std), o and down N(0, init_std / sqrt(2 * num_layers)); q/k biases 0; norms 1;
``vae2llm`` N(0, 1 / sqrt(latent_dim)) so that unit-variance latents embed at unit scale, like the
2-D sin-cos position added to them; timestep MLP N(0, 0.02) (DiT); ``llm2vae`` zero, so the
predicted velocity (or, with ``prediction="clean"``, the predicted clean latent: the data mean) is
exactly 0 at init. With ``cfg.vit``: the ViT's linear weights and the connector N(0, init_std),
biases 0, its position table N(0, 1 / sqrt(width)), LayerNorms 1 / 0 (pretrained weights replace
them: ``procpaint.model.bagel_io``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from procpaint.kernels.flow import rf_interpolate  # z_t; tests also import it from here
from procpaint.model.attention import AttnContext, build_attention
from procpaint.model.codecs import LatentCodec, build_codec
from procpaint.model.config import ModelConfig
from procpaint.model.embeddings import RotaryEmbedding, TimestepEmbedder, sincos_2d
from procpaint.model.layers import KVCache, LayerInputs, MoTDecoderLayer, RMSNorm, Routing
from procpaint.model.vit import Connector, GridPosEmbed, VisionEncoder
from procpaint.sequence.types import PackedBatch


@dataclass
class ModelOutput:
    """What the losses need: loss = lambda_ce * CE(ce_logits, ce_labels) + MSE(v_pred, noise - clean)."""

    ce_logits: torch.Tensor    # (C, V) logits at batch.ce_indexes
    v_pred: torch.Tensor       # (M, D) predicted velocity at batch.mse_indexes (noised latent tokens)
    clean: torch.Tensor        # (M, D) float32 clean latent tokens of those positions
    noise: torch.Tensor        # (M, D) float32 the noise they were mixed with
    timesteps: torch.Tensor    # (M,) float32 t of each noised token


class ProcPaintModel(nn.Module):
    """BAGEL-style MoT (``cfg.mot``) or dense transformer over one packed interleaved sequence."""

    def __init__(self, cfg: ModelConfig, codec: LatentCodec | None = None):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("model.vocab_size must be set (from the tokenizer) before building the model")
        self.cfg = cfg
        self.attn_backend = cfg.attn_backend           # may be changed after construction
        d = cfg.hidden_size
        self.codec = codec if codec is not None else build_codec(cfg)
        if self.codec.latent_dim != cfg.latent_dim:
            raise ValueError(f"codec latent dim {self.codec.latent_dim} != model latent_dim {cfg.latent_dim}")
        self.embed_tokens = nn.Embedding(cfg.vocab_size, d)
        self.vae2llm = nn.Linear(cfg.latent_dim, d)
        self.time_embedder = TimestepEmbedder(d, cfg.timestep_freq_dim, cfg.timestep_scale)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
        self.layers = nn.ModuleList(MoTDecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm_und = RMSNorm(d, cfg.rms_norm_eps)
        self.norm_gen = RMSNorm(d, cfg.rms_norm_eps) if cfg.mot else None
        self.output = None if cfg.tie_word_embeddings else nn.Linear(d, cfg.vocab_size, bias=False)
        self.llm2vae = nn.Linear(d, cfg.latent_dim)
        if cfg.vit:                                    # the understanding path for images (model/vit.py)
            self.vit = VisionEncoder(cfg)
            self.connector = Connector(cfg.vit_hidden_size, d)
            self.vit_pos_embed = GridPosEmbed(d, cfg.vit_max_patches_per_side, cfg.sincos_order)
        else:
            self.vit = self.connector = self.vit_pos_embed = None
        self.reset_parameters()

    # ----------------------------------------------------------------------------------- init
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """(Re-)initialise every parameter as documented at the top of this file."""
        cfg = self.cfg
        nn.init.normal_(self.embed_tokens.weight, std=cfg.init_std)
        if self.output is not None:
            nn.init.normal_(self.output.weight, std=cfg.init_std)
        nn.init.normal_(self.vae2llm.weight, std=cfg.latent_dim**-0.5)
        nn.init.zeros_(self.vae2llm.bias)
        self.time_embedder.reset_parameters(0.02)
        for layer in self.layers:
            layer.reset_parameters(cfg)
        for norm in (self.norm_und, self.norm_gen):
            if norm is not None:
                norm.reset_parameters()
        nn.init.zeros_(self.llm2vae.weight)
        nn.init.zeros_(self.llm2vae.bias)
        if self.vit is not None:
            self.vit.reset_parameters(cfg.init_std)
            self.connector.reset_parameters(cfg.init_std)

    init_weights = reset_parameters

    # ------------------------------------------------------------------------------ embedding
    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (T,) int64 -> (T, D)."""
        return self.embed_tokens(ids)

    def embed_latents(self, z: torch.Tensor, timesteps: torch.Tensor, patch_ids: torch.Tensor,
                      grid_w: int | torch.Tensor, time_index: torch.Tensor | None = None) -> torch.Tensor:
        """Latent tokens z (N, D_lat) at flow times (N,) and row-major patch ids (N,) -> (N, D).

        ``grid_w``: token-grid width of the image each token belongs to (int or (N,)).
        ``time_index``: when given, ``timesteps`` holds K distinct times and token i's is
        ``timesteps[time_index[i]]`` (inference: one t per image, embedded once, not per token).
        """
        dtype = self.vae2llm.weight.dtype
        rows, cols = patch_ids // grid_w, patch_ids % grid_w
        if self.cfg.sincos_order == "col_row":                               # BAGEL's (MAE's) table
            rows, cols = cols, rows
        pos = sincos_2d(rows, cols, self.cfg.hidden_size).to(dtype)           # (N, D)
        temb = self.time_embedder(timesteps)                                  # (N or K, D)
        if time_index is not None:
            temb = temb.index_select(0, time_index)
        return self.vae2llm(z.to(dtype)) + temb + pos

    def embed_vit(self, patches: torch.Tensor, position_ids: torch.Tensor,
                  seqlens: list[int] | torch.Tensor) -> torch.Tensor:
        """ViT patches (N, p*p*3) of ``seqlens`` images, grid ids (N,) -> understanding tokens (N, D):
        encoder -> connector + ``vit_pos_embed`` (BAGEL's understanding path; ``cfg.vit``)."""
        if self.vit is None:
            raise ValueError("the model has no ViT path (model.vit=False)")
        x = self.connector(self.vit(patches, position_ids, seqlens))                # (N, D)
        return x + self.vit_pos_embed(position_ids).to(x.dtype)

    def embed(self, text_emb: torch.Tensor, text_indexes: torch.Tensor, latent_emb: torch.Tensor,
              latent_indexes: torch.Tensor, seq_len: int, vit_emb: torch.Tensor | None = None,
              vit_indexes: torch.Tensor | None = None) -> torch.Tensor:
        """Scatter text (T, D), latent (N, D) and ViT (V, D) embeddings to their positions -> (L, D)."""
        x = text_emb.new_zeros(seq_len, text_emb.shape[-1])
        x = x.index_copy(0, text_indexes, text_emb)
        if latent_indexes.numel():
            x = x.index_copy(0, latent_indexes, latent_emb.to(x.dtype))
        if vit_indexes is not None and vit_indexes.numel():
            x = x.index_copy(0, vit_indexes, vit_emb.to(x.dtype))
        return x                                                              # (L, D)

    def embed_pack_vit(self, batch: PackedBatch) -> torch.Tensor | None:
        """The pack's ViT tokens (V, D) (:meth:`embed_vit`), or None when it holds none."""
        if batch.vit_indexes.numel() == 0:
            return None
        if self.vit is None:
            raise ValueError("the pack holds ViT tokens but the model has no ViT path (model.vit=False); "
                             "pack with the model's own ViTSplits.from_model_config")
        want = 3 * self.cfg.vit_patch_size**2
        if batch.vit_patches.shape[-1] != want:
            raise ValueError(f"the pack's ViT patches have {batch.vit_patches.shape[-1]} values, the model "
                             f"takes {want} (model.vit_patch_size={self.cfg.vit_patch_size})")
        return self.embed_vit(batch.vit_patches, batch.vit_position_ids, batch.vit_seqlens)

    # ---------------------------------------------------------------------------- transformer
    def prepare(self, batch: PackedBatch, dtype: torch.dtype | None = None) -> tuple[Routing, AttnContext]:
        """Expert routing and the attention context of a pack (built once per forward)."""
        dev = batch.position_ids.device
        routing = Routing.build(batch.und_indexes, batch.gen_indexes, batch.seq_len, self.cfg.mot)
        attn = build_attention(self.attn_backend, batch.split_lens, batch.attn_modes, batch.sample_lens,
                               device=dev, dtype=dtype or self.embed_tokens.weight.dtype,
                               num_real_tokens=batch.num_real_tokens or None)
        return routing, attn

    def forward_hidden(self, hidden: torch.Tensor, position_ids: torch.Tensor, routing: Routing,
                       attn: AttnContext | None, *, past_key_values: list[KVCache] | None = None,
                       use_cache: bool = False, kv=None) -> tuple[torch.Tensor, list[KVCache] | None]:
        """hidden (L, D) in sequence order -> final-normed hidden (L, D) in sequence order.

        ``position_ids`` (L,) are the RoPE positions of these L tokens. With ``past_key_values``
        (one (k, v) per layer, each (Lp, Hkv, hd)) the tokens also attend to earlier ones; ``attn``
        must then be an (L, Lp + L) context. ``use_cache`` returns every layer's full (k, v).
        ``kv``: instead of ``attn``/``past_key_values``, an object whose ``attend(layer_id, q, k, v)``
        keeps the keys/values and attends (the inference engine's per-branch cache).
        """
        x = routing.routed(hidden)                                           # (L, D) routed order
        cos, sin = self.rope(position_ids, x.dtype)                          # (L, 1, hd)
        inputs = LayerInputs(routing, cos, sin, attn, kv)
        presents: list[KVCache] | None = [] if use_cache else None
        for i, layer in enumerate(self.layers):
            past = past_key_values[i] if past_key_values is not None else None
            x, kv = layer(x, inputs, past, use_cache)
            if presents is not None:
                presents.append(kv)
        x = routing.apply(x, self.norm_und, self.norm_gen or self.norm_und)
        return routing.sequence(x), presents

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (C, D) -> logits (C, V); tied to ``embed_tokens`` unless configured otherwise."""
        w = self.embed_tokens.weight if self.output is None else self.output.weight
        return F.linear(hidden, w)

    def predict_velocity(self, hidden: torch.Tensor, z_t: torch.Tensor,
                         t: torch.Tensor | float) -> torch.Tensor:
        """hidden (M, D) of latent tokens at noisy latents z_t (M, D_lat), flow times t ((M,) or a
        float) -> velocity (M, D_lat) (target: noise - clean).

        With ``cfg.prediction == "clean"`` the head's output is the clean latent x0 and the velocity
        is (z_t - x0) / max(t, prediction_t_min), exact for z_t = t * noise + (1 - t) * x0.
        """
        out = self.llm2vae(hidden)
        if self.cfg.prediction == "velocity":
            return out
        t = torch.as_tensor(t, dtype=out.dtype, device=out.device)
        t = t.clamp_min(self.cfg.prediction_t_min)
        if t.ndim:
            t = t[:, None]
        return (z_t.to(out.dtype) - out) / t

    # -------------------------------------------------------------------------------- forward
    def encode_latents(self, batch: PackedBatch) -> tuple[torch.Tensor, int]:
        """Clean latent tokens (N, D_lat) float32 of the pack's latent positions, and the grid width."""
        n = batch.latent_indexes.numel()
        if n == 0:
            return torch.zeros(0, self.cfg.latent_dim, device=batch.images.device), 1
        h, w = self.codec.grid(batch.images.shape[-2], batch.images.shape[-1])
        if max(h, w) > self.cfg.max_latent_size:
            raise ValueError(f"images give a {h}x{w} latent grid, larger than model.max_latent_size="
                             f"{self.cfg.max_latent_size}")
        with torch.no_grad():
            tokens = self.codec.encode(batch.images)                          # (I, h*w, D_lat)
        return tokens[batch.latent_image_ids, batch.latent_patch_ids].float(), w   # (N, D_lat)

    def forward(self, batch: PackedBatch, *, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> ModelOutput:
        """One packed training step's forward: logits at CE targets, velocity at noised latents.

        ``noise`` (M, D_lat) for the noised tokens, sampled from ``generator`` when not given.
        """
        clean, grid_w = self.encode_latents(batch)                           # (N, D_lat)
        noised_rows = batch.latent_noised.nonzero().squeeze(1)               # (M,)
        clean_m = clean.index_select(0, noised_rows)                         # (M, D_lat)
        t_m = batch.latent_timesteps.index_select(0, noised_rows).float()    # (M,)
        if noise is None:
            noise = torch.randn(clean_m.shape, generator=generator, device=clean.device,
                                dtype=clean.dtype)
        elif noise.shape != clean_m.shape:
            raise ValueError(f"noise must be {tuple(clean_m.shape)} (noised latent tokens x latent dim), "
                             f"got {tuple(noise.shape)}")
        z = clean.index_copy(0, noised_rows, rf_interpolate(clean_m, noise, t_m))  # (N, D_lat)

        text_emb = self.embed_text(batch.text_ids)                           # (T, D)
        lat_emb = self.embed_latents(z, batch.latent_timesteps, batch.latent_patch_ids, grid_w)  # (N, D)
        vit_emb = self.embed_pack_vit(batch)                                  # (V, D) or None
        hidden = self.embed(text_emb, batch.text_indexes, lat_emb, batch.latent_indexes, batch.seq_len,
                            vit_emb, batch.vit_indexes)
        routing, attn = self.prepare(batch, hidden.dtype)
        out, _ = self.forward_hidden(hidden, batch.position_ids, routing, attn)  # (L, D)

        ce_logits = self.lm_head(out.index_select(0, batch.ce_indexes))      # (C, V)
        mse_idx = batch.latent_indexes.index_select(0, noised_rows)          # (M,)
        z_m = z.index_select(0, noised_rows)                                 # (M, D_lat)
        v_pred = self.predict_velocity(out.index_select(0, mse_idx), z_m, t_m)  # (M, D_lat)
        return ModelOutput(ce_logits, v_pred, clean_m, noise, t_m)
