"""BAGEL-format checkpoints in and out: the ``Bagel`` module's key names <-> :class:`ProcPaintModel`.

Key names follow ByteDance-Seed/Bagel (``modeling/bagel/bagel.py``, ``qwen2_navit.py``,
``modeling_utils.py``); the mapping is written afresh. A BAGEL directory holds

    llm_config.json     Qwen2 config of the language model (BAGEL forces qk_norm and the MoT layer)
    vit_config.json     SigLIP config of the understanding ViT
    ema.safetensors     the Bagel module's state dict (or model.safetensors, or shards + *.index.json)
    ae.safetensors      the FLUX autoencoder (its own key layout; procpaint.model.bagel_assets)
    tokenizer.json ...  the Qwen2 tokenizer (procpaint.model.bagel_assets.bagel_tokenizer)

Per decoder layer ``i`` and expert (understanding: no suffix, generation: ``_moe_gen``):

    language_model.model.layers.i.input_layernorm{sfx}.weight        -> layers.i.{und,gen}.input_norm.weight
    .self_attn.{q,k,v}_proj{sfx}.{weight,bias}  (concatenated q|k|v) -> .qkv.{weight,bias}
    .self_attn.{q,k}_norm{sfx}.weight                                -> .{q,k}_norm.weight
    .self_attn.o_proj{sfx}.weight                                    -> .o.weight
    .post_attention_layernorm{sfx}.weight                            -> .post_attn_norm.weight
    .mlp{sfx}.{gate,up,down}_proj.weight                             -> .mlp.{gate,up,down}.weight

plus ``language_model.model.{embed_tokens,norm,norm_moe_gen}``, ``language_model.lm_head`` and the
generation glue under the same names as ours (``time_embedder.mlp.{0,2}``, ``vae2llm``, ``llm2vae``).
``latent_pos_embed.pos_embed`` is BAGEL's fixed 2-D sin-cos table (max_latent_size**2, D); we compute
it on the fly, so loading checks the table against ours and export writes it.

The understanding path (``model.vit``; ``procpaint.model.vit``), per ViT layer ``i``:

    vit_model.vision_model.embeddings.patch_embedding.{weight,bias}  -> vit.patch_embed (W, p*p*3)
    vit_model.vision_model.embeddings.position_embedding.weight      -> vit.pos_embed.weight
    ...encoder.layers.i.layer_norm{1,2}.{weight,bias}                 -> vit.layers.i.norm{1,2}
    ...encoder.layers.i.self_attn.{q,k,v}_proj.{weight,bias} (q|k|v) -> vit.layers.i.qkv
    ...encoder.layers.i.self_attn.out_proj / .mlp.fc{1,2}            -> vit.layers.i.out / .fc{1,2}
    vit_model.vision_model.post_layernorm.{weight,bias}              -> vit.post_norm
    connector.fc{1,2}.{weight,bias}                                  -> connector.fc{1,2}

BAGEL stores the patch embedding flattened (a conv-shaped (W, 3, p, p) one is flattened on load);
``vit_pos_embed.pos_embed`` is a fixed sin-cos table like the latent one (checked, written).
``vit_config.json`` names one layer more than the checkpoint holds (BAGEL drops the last on load).
A model without the ViT path skips those keys on load (reported); export then copies them from
a ``template`` directory so BAGEL's own inference code gets a complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from torch import nn

from procpaint.io import atomic_save
from procpaint.model.config import ModelConfig
from procpaint.model.embeddings import sincos_grid
from procpaint.model.parallel import copy_into, is_dtensor

logger = logging.getLogger(__name__)

LLM = "language_model."
UND_PREFIXES = ("vit_model.", "connector.", "vit_pos_embed.")   # the ViT understanding path
POS_KEY = "latent_pos_embed.pos_embed"
VIT_POS_KEY = "vit_pos_embed.pos_embed"
VIT = "vit_model.vision_model."
PATCH_KEY = VIT + "embeddings.patch_embedding.weight"
WEIGHT_FILES = ("ema.safetensors", "model.safetensors")


class BagelFormatError(ValueError):
    """A directory or state dict that does not match the BAGEL layout or the model's shapes."""


def _short(keys, n: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


# ------------------------------------------------------------------------------------ key map
def key_map(cfg: ModelConfig, *, glue: bool = True) -> list[tuple[str, tuple[str, ...]]]:
    """(our key, BAGEL key(s)) pairs; several BAGEL keys are concatenated along dim 0 (q|k|v).

    ``glue=False`` leaves out the generation glue (timestep MLP, vae2llm, llm2vae) and the ViT
    path: the language model alone, as in a plain Qwen2 checkpoint.
    """
    m = LLM + "model."
    pairs = [("embed_tokens.weight", (m + "embed_tokens.weight",)),
             ("norm_und.weight", (m + "norm.weight",))]
    if cfg.mot:
        pairs.append(("norm_gen.weight", (m + "norm_moe_gen.weight",)))
    if not cfg.tie_word_embeddings:
        pairs.append(("output.weight", (LLM + "lm_head.weight",)))
    for i in range(cfg.num_layers):
        for ours, sfx in (("und", ""), ("gen", "_moe_gen"))[: 2 if cfg.mot else 1]:
            a, b, t = f"{m}layers.{i}.self_attn.", f"{m}layers.{i}.", f"layers.{i}.{ours}."
            pairs += [(t + "input_norm.weight", (f"{b}input_layernorm{sfx}.weight",)),
                      (t + "post_attn_norm.weight", (f"{b}post_attention_layernorm{sfx}.weight",)),
                      (t + "qkv.weight", tuple(f"{a}{p}_proj{sfx}.weight" for p in "qkv")),
                      (t + "o.weight", (f"{a}o_proj{sfx}.weight",))]
            pairs += [(f"{t}mlp.{p}.weight", (f"{b}mlp{sfx}.{p}_proj.weight",))
                      for p in ("gate", "up", "down")]
            if cfg.qkv_bias:
                pairs.append((t + "qkv.bias", tuple(f"{a}{p}_proj{sfx}.bias" for p in "qkv")))
            if cfg.qk_norm:
                pairs += [(t + f"{p}_norm.weight", (f"{a}{p}_norm{sfx}.weight",)) for p in "qk"]
    if glue:
        for name in ("time_embedder.mlp.0", "time_embedder.mlp.2", "vae2llm", "llm2vae"):
            pairs += [(f"{name}.{p}", (f"{name}.{p}",)) for p in ("weight", "bias")]
        if cfg.vit:
            pairs += vit_key_map(cfg)
    return pairs


def vit_key_map(cfg: ModelConfig, *, connector: bool = True) -> list[tuple[str, tuple[str, ...]]]:
    """:func:`key_map`'s pairs of the ViT path (``connector=False``: the SigLIP encoder alone)."""
    e, wb = VIT + "embeddings.", ("weight", "bias")
    pairs = [(f"vit.patch_embed.{p}", (f"{e}patch_embedding.{p}",)) for p in wb]
    pairs.append(("vit.pos_embed.weight", (e + "position_embedding.weight",)))
    for i in range(cfg.vit_num_layers):
        a, t = f"{VIT}encoder.layers.{i}.", f"vit.layers.{i}."
        for p in wb:
            pairs += [(f"{t}norm{n}.{p}", (f"{a}layer_norm{n}.{p}",)) for n in (1, 2)]
            pairs += [(f"{t}qkv.{p}", tuple(f"{a}self_attn.{x}_proj.{p}" for x in "qkv")),
                      (f"{t}out.{p}", (f"{a}self_attn.out_proj.{p}",)),
                      (f"{t}fc1.{p}", (f"{a}mlp.fc1.{p}",)), (f"{t}fc2.{p}", (f"{a}mlp.fc2.{p}",))]
    pairs += [(f"vit.post_norm.{p}", (f"{VIT}post_layernorm.{p}",)) for p in wb]
    if connector:
        pairs += [(f"connector.{n}.{p}", (f"connector.{n}.{p}",)) for n in ("fc1", "fc2") for p in wb]
    return pairs


def _qkv_sizes(cfg: ModelConfig, key: str = "") -> list[int]:
    """Rows of q, k, v in our fused ``key`` (the ViT's are equal: no grouped-query attention)."""
    if key.startswith("vit."):
        return [cfg.vit_hidden_size] * 3
    return [cfg.num_heads * cfg.head_dim] + [cfg.num_kv_heads * cfg.head_dim] * 2


def latent_pos_table(cfg: ModelConfig) -> torch.Tensor:
    """BAGEL's ``latent_pos_embed.pos_embed`` (max_latent_size**2, D) as our model computes it."""
    g = cfg.max_latent_size
    return sincos_grid(torch.arange(g * g), g, cfg.hidden_size, cfg.sincos_order)


# ------------------------------------------------------------------------------ state dicts
def to_bagel_state_dict(model: nn.Module, *, glue: bool = True) -> dict[str, torch.Tensor]:
    """The model's weights under BAGEL's key names (detached views; q|k|v split back)."""
    cfg: ModelConfig = model.cfg
    ours = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, theirs in key_map(cfg, glue=glue):
        t = ours[key].detach()
        parts = t.split(_qkv_sizes(cfg, key)) if len(theirs) > 1 else (t,)
        out.update({k: p.contiguous() for k, p in zip(theirs, parts)})
    if glue:
        out[POS_KEY] = latent_pos_table(cfg).to(ours["vae2llm.weight"].dtype)
        if cfg.vit:
            out[VIT_POS_KEY] = model.vit_pos_embed.table().to(ours["connector.fc1.weight"].dtype)
    return out


def _flatten_patch_embedding(sd: dict) -> dict:
    """A conv-shaped (W, 3, p, p) ViT patch embedding as BAGEL's flattened (W, p*p*3), (dy, dx, c)."""
    w = sd.get(PATCH_KEY)
    if w is None or w.ndim != 4:
        return sd
    return sd | {PATCH_KEY: w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)}


def _resize_vocab(sd: dict, ours: dict, source: str) -> dict:
    """Token-embedding and LM-head rows cut or extended to the model's vocabulary (the tokenizer's:
    Qwen2 pads its embedding to 152064 rows; added tokens may go past a checkpoint's rows, and keep
    their initialisation)."""
    sd = dict(sd)
    for theirs, key in ((LLM + "model.embed_tokens.weight", "embed_tokens.weight"),
                        (LLM + "lm_head.weight", "output.weight" if "output.weight" in ours else
                         "embed_tokens.weight")):
        t, want = sd.get(theirs), ours[key]
        if t is None or t.shape[1:] != want.shape[1:] or t.shape[0] == want.shape[0]:
            continue
        n = min(t.shape[0], want.shape[0])
        logger.warning("%s: %s has %d rows, the model's vocabulary %d: rows %s", source, theirs,
                       t.shape[0], want.shape[0], f">= {n} dropped" if t.shape[0] > n else
                       f"{t.shape[0]}..{want.shape[0] - 1} keep their initialisation")
        if is_dtensor(want):               # sharded: every rank gathers the rows it keeps
            want = want.full_tensor()
        sd[theirs] = torch.cat([t[:n].to(want.dtype), want[n:].detach().cpu()])
    return sd


def load_bagel_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], *, glue: bool = True,
                          resize_vocab: bool = False, source: str = "checkpoint",
                          pairs: list[tuple[str, tuple[str, ...]]] | None = None) -> list[str]:
    """Copy BAGEL-named weights ``sd`` into ``model``; every mismatch is one :class:`BagelFormatError`.

    ``resize_vocab``: the vocabulary dimension alone may differ (see :func:`_resize_vocab`).
    ``pairs``: the part of :func:`key_map` to load (default: all of it for ``glue``).
    Returns the understanding-path keys that were skipped (a model without the ViT path).
    """
    cfg: ModelConfig = model.cfg
    ours = model.state_dict()
    if resize_vocab:
        sd = _resize_vocab(sd, ours, source)
    sd = _flatten_patch_embedding(sd)
    pairs = key_map(cfg, glue=glue) if pairs is None else pairs
    expected = {k for _, theirs in pairs for k in theirs}
    missing = sorted(expected - sd.keys())
    skipped = [] if cfg.vit else sorted(k for k in sd if k.startswith(UND_PREFIXES))
    unexpected = sorted(sd.keys() - expected - set(skipped) - {POS_KEY, VIT_POS_KEY})
    if cfg.tie_word_embeddings and LLM + "lm_head.weight" in unexpected:   # HF keeps a tied copy
        unexpected.remove(LLM + "lm_head.weight")
    bad_shape, new = [], {}
    for key, theirs in pairs:
        if any(k not in sd for k in theirs):
            continue
        want = ours[key].shape
        sizes = _qkv_sizes(cfg, key) if len(theirs) > 1 else [want[0]]
        for k, n in zip(theirs, sizes):
            if tuple(sd[k].shape) != (n, *want[1:]):
                bad_shape.append(f"{k} {tuple(sd[k].shape)} vs model {(n, *want[1:])}")
        new[key] = torch.cat([sd[k] for k in theirs]) if len(theirs) > 1 else sd[k]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_short(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_short(unexpected)}")
    if bad_shape:
        problems.append(f"{len(bad_shape)} shape mismatch(es): {_short(bad_shape, 4)}")
    tables = [(POS_KEY, latent_pos_table(cfg), "max_latent_size")] if glue else []
    if cfg.vit and VIT_POS_KEY in sd:
        tables.append((VIT_POS_KEY, model.vit_pos_embed.table(), "vit_max_patches_per_side"))
    for name, table, side in tables if not bad_shape else ():
        got = sd.get(name)
        if got is None:
            continue
        if got.shape != table.shape:
            problems.append(f"{name} is {tuple(got.shape)}, the model's table is {tuple(table.shape)} "
                            f"(model.{side}={getattr(cfg, side)})")
        elif not torch.allclose(got.float(), table.to(got.dtype).float(), atol=1e-6):
            problems.append(f"{name} differs from the model's 2-D sin-cos table "
                            f"(model.sincos_order={cfg.sincos_order!r}; BAGEL's is 'col_row')")
    if cfg.tie_word_embeddings and LLM + "lm_head.weight" in sd and not bad_shape:
        if not torch.equal(sd[LLM + "lm_head.weight"], sd[LLM + "model.embed_tokens.weight"]):
            problems.append("lm_head differs from embed_tokens but model.tie_word_embeddings=True")
    if problems:
        raise BagelFormatError(f"{source} does not fit the model: " + "; ".join(problems))
    for key, t in new.items():
        copy_into(ours[key], t)                # a sharded (FSDP) model keeps only its own rows
    return skipped


def load_qwen2_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], *, source: str = "Qwen2") -> None:
    """A Hugging Face ``Qwen2ForCausalLM`` state dict (``model.*``, ``lm_head.weight``) into the
    understanding expert; with ``cfg.mot`` the generation expert starts as its copy (BAGEL's
    ``init_moe``). The generation glue keeps its initialisation. Qwen2 has no q/k norms: build the
    model with ``qk_norm=False`` (a model with them reports their keys missing)."""
    cfg: ModelConfig = model.cfg
    theirs = {LLM + k: v for k, v in sd.items()}
    if cfg.mot:
        theirs |= {_gen_name(k): v for k, v in theirs.items() if _gen_name(k) != k}
    load_bagel_state_dict(model, theirs, glue=False, source=source)


def load_siglip_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], *, source: str = "SigLIP") -> None:
    """A Hugging Face ``SiglipVisionModel`` state dict (``embeddings.*``, ``encoder.*``, ...; before
    transformers 5 under ``vision_model.``) into the ViT encoder (``cfg.vit``); the connector keeps
    its weights. The conv patch embedding is flattened; a pooling head (``head.*``) has no place
    in BAGEL and is left out. The layer count must match the model's (BAGEL's 26 of so400m's 27:
    drop the last layer's keys first)."""
    if not model.cfg.vit:
        raise BagelFormatError(f"{source}: the model has no ViT path (model.vit=False)")
    sd = {k.removeprefix("vision_model."): v for k, v in sd.items()}
    theirs = {VIT + k: v for k, v in sd.items()
              if not k.startswith("head.") and k != "embeddings.position_ids"}
    load_bagel_state_dict(model, theirs, glue=False, pairs=vit_key_map(model.cfg, connector=False),
                          source=source)


def _gen_name(key: str) -> str:
    """BAGEL's generation-expert twin of an understanding key (the key itself if it has none)."""
    m = LLM + "model."
    if key == m + "norm.weight":
        return m + "norm_moe_gen.weight"
    if not key.startswith(m + "layers."):
        return key
    for part in ("input_layernorm", "post_attention_layernorm", "q_norm", "k_norm"):
        if f".{part}." in key:
            return key.replace(f".{part}.", f".{part}_moe_gen.")
    for p in "qkvo":
        if f".{p}_proj." in key:
            return key.replace(f".{p}_proj.", f".{p}_proj_moe_gen.")
    return key.replace(".mlp.", ".mlp_moe_gen.")


# --------------------------------------------------------------------------------- directory
def _weight_files(path: Path) -> list[Path]:
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return [path / name]
    index = sorted(path.glob("*.safetensors.index.json"))
    if index:
        weight_map = json.loads(index[0].read_text())["weight_map"]
        files = [path / f for f in dict.fromkeys(weight_map.values())]
        absent = [str(f) for f in files if not f.is_file()]
        if absent:
            raise BagelFormatError(f"{index[0]} names shard(s) that do not exist: {_short(absent, 3)}")
        return files
    return []


def check_bagel_dir(path: str | Path) -> Path:
    """``path`` as a Path if it is a BAGEL-format directory; otherwise say what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise BagelFormatError(f"{path}: not a directory (expected a BAGEL-format checkpoint directory)")
    lacks = [] if (path / "llm_config.json").is_file() else ["llm_config.json"]
    if not _weight_files(path):
        lacks.append(f"weights ({' or '.join(WEIGHT_FILES)} or *.safetensors.index.json + shards)")
    if lacks:
        raise BagelFormatError(f"{path} is not a BAGEL-format directory: it lacks {', '.join(lacks)}")
    return path


def read_llm_config(path: str | Path) -> dict:
    return json.loads((check_bagel_dir(path) / "llm_config.json").read_text())


def read_bagel_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the directory's weight file(s), on the CPU."""
    from safetensors.torch import load_file

    sd: dict[str, torch.Tensor] = {}
    for f in _weight_files(check_bagel_dir(path)):
        sd.update(load_file(str(f)))
    return sd


def check_llm_config(cfg: ModelConfig, llm: dict, source: str = "llm_config.json", *,
                     vocab: bool = True) -> None:
    """Fields that shapes do not reveal (RoPE base, eps) and the dimensions, named per model key."""
    rope = llm.get("rope_theta") or (llm.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    scaling = llm.get("rope_scaling") or {}
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise BagelFormatError(f"{source}: rope_scaling {scaling} is not supported (plain RoPE only)")
    pairs = [("hidden_size", "hidden_size"), ("num_layers", "num_hidden_layers"),
             ("num_heads", "num_attention_heads"), ("num_kv_heads", "num_key_value_heads"),
             ("intermediate_size", "intermediate_size")] + [("vocab_size", "vocab_size")] * vocab
    bad = [f"model.{ours}={getattr(cfg, ours)} vs {theirs}={llm.get(theirs)}"
           for ours, theirs in pairs if theirs in llm and getattr(cfg, ours) != llm[theirs]]
    if abs(cfg.rope_theta - float(rope)) > 1e-6 * float(rope):
        bad.append(f"model.rope_theta={cfg.rope_theta} vs rope_theta={rope}")
    if "rms_norm_eps" in llm and abs(cfg.rms_norm_eps - llm["rms_norm_eps"]) > 1e-12:
        bad.append(f"model.rms_norm_eps={cfg.rms_norm_eps} vs rms_norm_eps={llm['rms_norm_eps']}")
    if llm.get("hidden_act", "silu") != "silu":
        bad.append(f"hidden_act={llm['hidden_act']!r} (the model's MLP is SwiGLU with silu)")
    if bad:
        raise BagelFormatError(f"{source} does not match the model config: " + "; ".join(bad))


def check_vit_config(cfg: ModelConfig, vit: dict, source: str = "vit_config.json") -> None:
    """The ViT's dimensions against BAGEL's ``vit_config.json`` (which counts one layer more)."""
    pairs = [("vit_hidden_size", "hidden_size"), ("vit_num_heads", "num_attention_heads"),
             ("vit_intermediate_size", "intermediate_size"), ("vit_patch_size", "patch_size")]
    bad = [f"model.{ours}={getattr(cfg, ours)} vs {theirs}={vit.get(theirs)}"
           for ours, theirs in pairs if theirs in vit and getattr(cfg, ours) != vit[theirs]]
    if "num_hidden_layers" in vit and cfg.vit_num_layers != vit["num_hidden_layers"] - 1:
        bad.append(f"model.vit_num_layers={cfg.vit_num_layers} vs num_hidden_layers="
                   f"{vit['num_hidden_layers']} (BAGEL runs one layer fewer)")
    if "image_size" in vit and vit["image_size"] // vit.get("patch_size", cfg.vit_patch_size) \
            != cfg.vit_max_patches_per_side:
        bad.append(f"model.vit_max_patches_per_side={cfg.vit_max_patches_per_side} vs image_size / "
                   f"patch_size={vit['image_size']} / {vit.get('patch_size', cfg.vit_patch_size)}")
    if vit.get("hidden_act", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        bad.append(f"hidden_act={vit['hidden_act']!r} (the ViT's MLP is GELU with tanh)")
    if "layer_norm_eps" in vit and abs(cfg.vit_layer_norm_eps - vit["layer_norm_eps"]) > 1e-12:
        bad.append(f"model.vit_layer_norm_eps={cfg.vit_layer_norm_eps} vs "
                   f"layer_norm_eps={vit['layer_norm_eps']}")
    if bad:
        raise BagelFormatError(f"{source} does not match the model config: " + "; ".join(bad))


def bagel_vit_config(cfg: ModelConfig) -> dict:
    """A SigLIP vit_config.json for ``cfg``'s ViT (one layer more than the model runs, as BAGEL reads it)."""
    return dict(model_type="siglip_vision_model", hidden_size=cfg.vit_hidden_size,
                intermediate_size=cfg.vit_intermediate_size, num_attention_heads=cfg.vit_num_heads,
                num_hidden_layers=cfg.vit_num_layers + 1, patch_size=cfg.vit_patch_size,
                image_size=cfg.vit_patch_size * cfg.vit_max_patches_per_side, num_channels=3,
                hidden_act="gelu_pytorch_tanh", layer_norm_eps=cfg.vit_layer_norm_eps)


def load_bagel(model: nn.Module, path: str | Path, *, resize_vocab: bool = True, weights: bool = True
               ) -> nn.Module:
    """Load a BAGEL-format directory's language model, generation glue and (``model.vit``) ViT path
    into ``model`` (in place),
    and its ``ae.safetensors`` into a VAE codec that has no ``model.vae_path`` of its own.

    The model's vocabulary is its tokenizer's; ``resize_vocab`` lets the embedding and LM head
    differ from the checkpoint's in rows only (logged). Every other dimension must match.
    ``weights=False``: the autoencoder only.
    """
    path = check_bagel_dir(path)
    skipped = []
    if weights:
        check_llm_config(model.cfg, read_llm_config(path), str(path / "llm_config.json"),
                         vocab=not resize_vocab)
        if model.cfg.vit and (path / "vit_config.json").is_file():
            check_vit_config(model.cfg, json.loads((path / "vit_config.json").read_text()),
                             str(path / "vit_config.json"))
        skipped = load_bagel_state_dict(model, read_bagel_weights(path), resize_vocab=resize_vocab,
                                        source=str(path))
    codec = getattr(model, "codec", None)
    if getattr(codec, "vae", False) is None and (path / "ae.safetensors").is_file():
        from procpaint.model.bagel_assets import attach_flux_autoencoder

        attach_flux_autoencoder(codec, path / "ae.safetensors")   # a VAE codec without model.vae_path
    if skipped:
        logger.warning("%s: %d understanding-path tensors (%s) skipped: the model has no ViT path "
                       "(model.vit=False); export_bagel(..., template=%s) carries them over", path,
                       len(skipped), ", ".join(UND_PREFIXES), path)
    return model


def bagel_llm_config(cfg: ModelConfig) -> dict:
    """A Qwen2-style llm_config.json for ``cfg`` (with BAGEL's qk_norm / layer_module keys)."""
    return dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu",
                hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                num_key_value_heads=cfg.num_kv_heads, rms_norm_eps=cfg.rms_norm_eps,
                rope_theta=cfg.rope_theta, vocab_size=cfg.vocab_size,
                tie_word_embeddings=cfg.tie_word_embeddings, qk_norm=cfg.qk_norm,
                layer_module="Qwen2MoTDecoderLayer" if cfg.mot else "Qwen2DecoderLayer",
                max_position_embeddings=32768, use_sliding_window=False)


def export_bagel(model: nn.Module, out: str | Path, *, template: str | Path | None = None,
                 dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` as a BAGEL-format directory ``out`` (llm_config.json + ema.safetensors).

    ``template``: the BAGEL directory the model came from; its other files (vit_config.json,
    ae.safetensors, tokenizer files) are copied, and for a model without the ViT path its
    understanding-path tensors (ViT, connector) are carried into ema.safetensors, so BAGEL's
    inference code can run the result. A model with the ViT path writes its own (and a
    vit_config.json when the template has none).
    Each file is written under a temporary name and renamed.
    """
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sd = to_bagel_state_dict(model)
    if template is not None:
        template = check_bagel_dir(template)
        if not model.cfg.vit:
            sd.update({k: v for k, v in read_bagel_weights(template).items() if k.startswith(UND_PREFIXES)})
        ours = {f.name for f in _weight_files(template)} | {"llm_config.json"}
        ours |= {f.name for f in template.glob("*.safetensors.index.json")}
        for f in template.iterdir():               # vit_config.json, ae.safetensors, tokenizer files
            if f.is_file() and f.name not in ours:
                atomic_save(out / f.name, lambda t, f=f: shutil.copyfile(f, t))
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    sd = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    if model.cfg.vit and (template is None or not (template / "vit_config.json").is_file()):
        atomic_save(out / "vit_config.json",
                    lambda t: t.write_text(json.dumps(bagel_vit_config(model.cfg), indent=2) + "\n"))
    atomic_save(out / "llm_config.json",
                lambda t: t.write_text(json.dumps(bagel_llm_config(model.cfg), indent=2) + "\n"))
    atomic_save(out / "ema.safetensors", lambda t: save_file(sd, str(t), metadata={"format": "pt"}))
    return out
