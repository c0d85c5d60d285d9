"""BAGEL-format checkpoints: a synthetic tiny checkpoint with BAGEL's key names (enumerated here from
BAGEL's module structure, independently of procpaint.model.bagel_io) loads with zero missing and
unexpected keys, export -> load round-trips bit-exactly, and every mismatch is a clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from procpaint.model import build_model, model_config
from procpaint.model.bagel_io import (
    UND_PREFIXES,
    VIT_POS_KEY,
    BagelFormatError,
    export_bagel,
    load_bagel,
    load_bagel_state_dict,
    read_bagel_weights,
    to_bagel_state_dict,
)

D, LAYERS, H, HKV, F, V, LAT, FREQ, MAXLAT = 32, 2, 4, 2, 48, 50, 16, 16, 4
HD = D // H


def tiny_cfg(**kw):
    base = dict(vocab_size=V, hidden_size=D, num_layers=LAYERS, num_heads=H, num_kv_heads=HKV,
                intermediate_size=F, rope_theta=1e6, tie_word_embeddings=False, qkv_bias=True,
                qk_norm=True, mot=True, timestep_freq_dim=FREQ, max_latent_size=MAXLAT,
                timestep_scale=1.0, sincos_order="col_row", attn_backend="sdpa", codec="vae",
                latent_channels=LAT, latent_downsample=8, patch_size=2)
    return model_config("debug", **{**base, **kw})


def mae_table(dim: int, grid: int) -> np.ndarray:
    """BAGEL's PositionEmbedding table: MAE's get_2d_sincos_pos_embed (meshgrid with w first)."""
    gh, gw = np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32)
    g = np.stack(np.meshgrid(gw, gh), axis=0).reshape(2, -1)

    def one(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos, omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one(dim // 2, g[0]), one(dim // 2, g[1])], axis=1).astype(np.float32)


def bagel_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of a Bagel(Qwen2ForCausalLM with Qwen2MoTDecoderLayer, SigLIP, ...) state dict."""
    s = {"language_model.model.embed_tokens.weight": (V, D), "language_model.model.norm.weight": (D,),
         "language_model.model.norm_moe_gen.weight": (D,), "language_model.lm_head.weight": (V, D)}
    for i in range(LAYERS):
        p = f"language_model.model.layers.{i}."
        for sfx in ("", "_moe_gen"):
            s[f"{p}input_layernorm{sfx}.weight"] = (D,)
            s[f"{p}post_attention_layernorm{sfx}.weight"] = (D,)
            for proj, n in (("q", H), ("k", HKV), ("v", HKV)):
                s[f"{p}self_attn.{proj}_proj{sfx}.weight"] = (n * HD, D)
                s[f"{p}self_attn.{proj}_proj{sfx}.bias"] = (n * HD,)
            s[f"{p}self_attn.o_proj{sfx}.weight"] = (D, H * HD)
            s[f"{p}self_attn.q_norm{sfx}.weight"] = (HD,)
            s[f"{p}self_attn.k_norm{sfx}.weight"] = (HD,)
            s[f"{p}mlp{sfx}.gate_proj.weight"] = (F, D)
            s[f"{p}mlp{sfx}.up_proj.weight"] = (F, D)
            s[f"{p}mlp{sfx}.down_proj.weight"] = (D, F)
    s |= {"time_embedder.mlp.0.weight": (D, FREQ), "time_embedder.mlp.0.bias": (D,),
          "time_embedder.mlp.2.weight": (D, D), "time_embedder.mlp.2.bias": (D,),
          "vae2llm.weight": (D, LAT * 4), "vae2llm.bias": (D,), "llm2vae.weight": (LAT * 4, D),
          "llm2vae.bias": (LAT * 4,)}
    # The understanding path (kept through export, not used by the model yet).
    s |= {"vit_model.vision_model.embeddings.patch_embedding.weight": (24, 3 * 14 * 14),
          "vit_model.vision_model.post_layernorm.weight": (24,), "connector.fc1.weight": (D, 24),
          "connector.fc1.bias": (D,), "connector.fc2.weight": (D, D), "connector.fc2.bias": (D,),
          "vit_pos_embed.pos_embed": (9, D)}
    return s


def llm_config(**kw) -> dict:
    return dict(hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=H, num_key_value_heads=HKV,
                intermediate_size=F, vocab_size=V, rope_theta=1e6, rms_norm_eps=1e-6, hidden_act="silu",
                tie_word_embeddings=False, model_type="qwen2", **kw)


@pytest.fixture
def bagel_dir(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(shape, generator=g) for k, shape in bagel_shapes().items()}
    sd["latent_pos_embed.pos_embed"] = torch.from_numpy(mae_table(D, MAXLAT))
    d = tmp_path / "bagel"
    d.mkdir()
    save_file(sd, str(d / "ema.safetensors"))
    (d / "llm_config.json").write_text(json.dumps(llm_config()))
    (d / "vit_config.json").write_text(json.dumps({"hidden_size": 24, "patch_size": 14}))
    (d / "tokenizer.json").write_text('{"not": "really a tokenizer"}')
    return d, sd


def test_loads_with_every_key_used_and_round_trips_bit_exactly(bagel_dir, tmp_path, caplog):
    d, sd = bagel_dir
    model = build_model(tiny_cfg())
    load_bagel(model, d)
    assert "7 understanding-path tensors" in caplog.text
    # Weights landed where BAGEL's module would use them: fused q|k|v of the generation expert, o, mlp.
    p = "language_model.model.layers.1."
    qkv = torch.cat([sd[f"{p}self_attn.{x}_proj_moe_gen.weight"] for x in "qkv"])
    assert torch.equal(model.layers[1].gen.qkv.weight, qkv)
    down = sd["language_model.model.layers.0.mlp.down_proj.weight"]
    assert torch.equal(model.layers[0].und.mlp.down.weight, down)
    assert torch.equal(model.output.weight, sd["language_model.lm_head.weight"])

    out = export_bagel(model, tmp_path / "out", template=d)
    back = load_file(str(out / "ema.safetensors"))
    assert back.keys() == sd.keys()                       # zero missing, zero unexpected, ViT carried
    assert all(torch.equal(back[k], sd[k]) for k in sd)    # bit-exact
    assert (out / "vit_config.json").read_text() == (d / "vit_config.json").read_text()
    assert (out / "tokenizer.json").read_text() == (d / "tokenizer.json").read_text()
    assert json.loads((out / "llm_config.json").read_text())["layer_module"] == "Qwen2MoTDecoderLayer"

    again = build_model(tiny_cfg())
    load_bagel(again, out)
    a, b = model.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(out.glob(".*.tmp*"))                  # no temporary files left behind


def test_sharded_checkpoint_with_index(bagel_dir):
    d, sd = bagel_dir
    keys = sorted(sd)
    (d / "ema.safetensors").unlink()
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, str(d / name))
    weight_map = {k: name for name, ks in shards.items() for k in ks}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert read_bagel_weights(d).keys() == sd.keys()
    load_bagel(build_model(tiny_cfg()), d)


def test_export_import_without_template_is_exact(tmp_path):
    model = build_model(tiny_cfg(mot=False, qk_norm=False, tie_word_embeddings=True, sincos_order="row_col"))
    out = export_bagel(model, tmp_path / "dense")
    assert "language_model.lm_head.weight" not in load_file(str(out / "ema.safetensors"))
    again = build_model(tiny_cfg(mot=False, qk_norm=False, tie_word_embeddings=True, sincos_order="row_col"))
    load_bagel(again, out)
    a, b = model.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _err(model, sd) -> str:
    with pytest.raises(BagelFormatError) as e:
        load_bagel_state_dict(model, sd, source="ckpt")
    return str(e.value)


def test_mismatches_are_clear_errors(bagel_dir):
    _, sd = bagel_dir
    model = build_model(tiny_cfg())
    gone = "language_model.model.layers.0.self_attn.k_norm_moe_gen.weight"
    msg = _err(model, {k: v for k, v in sd.items() if k != gone})
    assert f"1 missing key(s): {gone}" in msg
    msg = _err(model, {k: v for k, v in sd.items() if "layers.1." not in k})
    assert "missing key(s)" in msg and "(+" in msg and "more)" in msg           # a short list, then a count
    msg = _err(model, sd | {"language_model.model.layers.9.mlp.up_proj.weight": torch.zeros(1)})
    assert "1 unexpected key(s): language_model.model.layers.9.mlp.up_proj.weight" in msg
    bad = "language_model.model.layers.0.self_attn.k_proj.weight"
    msg = _err(model, sd | {bad: torch.zeros(3, D)})
    assert f"{bad} (3, {D}) vs model ({HKV * HD}, {D})" in msg
    # Our 2-D sin-cos in the other channel order is not BAGEL's table.
    msg = _err(build_model(tiny_cfg(sincos_order="row_col")), sd)
    assert "sincos_order" in msg
    # A dense model, or one without q/k norms, does not take a MoT checkpoint silently.
    assert "unexpected" in _err(build_model(tiny_cfg(mot=False)), sd)
    assert "q_norm" in _err(build_model(tiny_cfg(qk_norm=False)), sd)


def test_directory_and_config_errors(bagel_dir, tmp_path):
    d, _ = bagel_dir
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BagelFormatError, match="not a BAGEL-format directory.*llm_config.json.*weights"):
        load_bagel(build_model(tiny_cfg()), empty)
    with pytest.raises(BagelFormatError, match="not a directory"):
        load_bagel(build_model(tiny_cfg()), tmp_path / "nowhere")
    with pytest.raises(BagelFormatError, match=r"model.rope_theta=10000.0 vs rope_theta=1000000.0"):
        load_bagel(build_model(tiny_cfg(rope_theta=1e4)), d)
    (d / "llm_config.json").write_text(json.dumps(llm_config() | {"num_hidden_layers": 3}))
    with pytest.raises(BagelFormatError, match=r"model.num_layers=2 vs num_hidden_layers=3"):
        load_bagel(build_model(tiny_cfg()), d)


def test_build_model_init_from(bagel_dir):
    d, sd = bagel_dir
    model = build_model(tiny_cfg(init_from=str(d)))
    assert torch.equal(model.embed_tokens.weight, sd["language_model.model.embed_tokens.weight"])
    ours = to_bagel_state_dict(model)
    assert all(torch.equal(ours[k], sd[k]) for k in ours)


def test_bagel_7b_key_count_on_meta():
    """The real model's layout: 28 MoT layers x 2 experts x 14 tensors + embeddings, heads and glue;
    SigLIP's 26 layers x 16 tensors + embeddings, post-norm, connector and its sin-cos table."""
    cfg = model_config("bagel-7b")
    model = build_model(cfg, device="meta")
    keys = to_bagel_state_dict(model).keys()
    assert len(keys) == 28 * 2 * 14 + 4 + 8 + 1 + 26 * 16 + 3 + 2 + 4 + 1
    assert "language_model.model.layers.27.self_attn.q_proj_moe_gen.bias" in keys
    assert "vit_model.vision_model.encoder.layers.25.mlp.fc2.bias" in keys
    assert "vit_model.vision_model.encoder.layers.26.mlp.fc2.bias" not in keys   # BAGEL drops it


def test_vocabulary_follows_the_tokenizer(bagel_dir, caplog):
    d, sd = bagel_dir
    emb, head = sd["language_model.model.embed_tokens.weight"], sd["language_model.lm_head.weight"]
    small = build_model(tiny_cfg(vocab_size=V - 7))            # Qwen2 pads its embedding: rows dropped
    load_bagel(small, d)
    assert torch.equal(small.embed_tokens.weight, emb[: V - 7])
    assert torch.equal(small.output.weight, head[: V - 7])
    big = build_model(tiny_cfg(vocab_size=V + 3))              # added tokens past the checkpoint's rows
    init = big.embed_tokens.weight[V:].clone()
    load_bagel(big, d)
    assert torch.equal(big.embed_tokens.weight[:V], emb) and torch.equal(big.embed_tokens.weight[V:], init)
    assert "rows >= 43 dropped" in caplog.text
    with pytest.raises(BagelFormatError, match="vocab_size"):
        load_bagel(build_model(tiny_cfg(vocab_size=V + 3)), d, resize_vocab=False)


def test_qwen2_tokenizer_gets_procpaint_specials(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from procpaint.model.bagel_assets import bagel_tokenizer
    from procpaint.sequence.tokenizer import TextTokenizer

    tok = Tokenizer(models.BPE())                                   # a byte-level BPE like Qwen2's
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    qwen_specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
    tok.train_from_iterator(["a photo of a red circle left of a blue square"] * 4,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=qwen_specials,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    d = tmp_path / "bagel"
    d.mkdir()
    tok.save(str(d / "tokenizer.json"))
    before = tok.get_vocab(with_added_tokens=True)
    out = bagel_tokenizer(d)
    text = TextTokenizer(out)                                       # all of procpaint's specials exist
    assert text.vision_start_id == before["<|vision_start|>"]       # BAGEL's markers keep their ids
    assert all(out.token_to_id(w) == i for w, i in before.items())
    assert text.vocab_size == len(before) + 8                       # <pad> <eos> and six tags
    ids = text.encode("<ins>a red circle</ins>")
    assert ids[0] == text.tag_ids["<ins>"] and ids[-1] == text.tag_ids["</ins>"]
    assert text.decode(ids[1:-1]) == "a red circle"
    with pytest.raises(BagelFormatError, match="no tokenizer.json"):
        bagel_tokenizer(tmp_path)


# ------------------------------------------------------------------ with the ViT understanding path
VW, VL, VH, VF, VP, VS = 24, 2, 2, 40, 14, 3     # a tiny SigLIP: width, layers, heads, MLP, patch, side
VIT_CONFIG = dict(model_type="siglip_vision_model", hidden_size=VW, intermediate_size=VF,
                  num_attention_heads=VH, num_hidden_layers=VL + 1, patch_size=VP, image_size=VP * VS,
                  hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)   # BAGEL builds one layer fewer


def vit_cfg(**kw):
    vit = dict(vit=True, vit_hidden_size=VW, vit_num_layers=VL, vit_num_heads=VH, vit_intermediate_size=VF,
               vit_patch_size=VP, vit_max_patches_per_side=VS)
    return tiny_cfg(**{**vit, **kw})


def vit_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of BAGEL's understanding path: SigLIP (NaViT, patch embedding flattened by
    ``convert_conv2d_to_linear``, no pooling head), the MLP connector and the fixed ``vit_pos_embed``."""
    v = "vit_model.vision_model."
    s = {v + "embeddings.patch_embedding.weight": (VW, VP * VP * 3),
         v + "embeddings.patch_embedding.bias": (VW,),
         v + "embeddings.position_embedding.weight": (VS * VS, VW),
         v + "post_layernorm.weight": (VW,), v + "post_layernorm.bias": (VW,)}
    for i in range(VL):
        p = f"{v}encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            s[f"{p}{norm}.weight"] = s[f"{p}{norm}.bias"] = (VW,)
        for proj in ("q", "k", "v", "out"):
            s[f"{p}self_attn.{proj}_proj.weight"], s[f"{p}self_attn.{proj}_proj.bias"] = (VW, VW), (VW,)
        s[f"{p}mlp.fc1.weight"], s[f"{p}mlp.fc1.bias"] = (VF, VW), (VF,)
        s[f"{p}mlp.fc2.weight"], s[f"{p}mlp.fc2.bias"] = (VW, VF), (VW,)
    return s | {"connector.fc1.weight": (D, VW), "connector.fc1.bias": (D,), "connector.fc2.weight": (D, D),
                "connector.fc2.bias": (D,)}


@pytest.fixture
def bagel_vit_dir(tmp_path):
    g = torch.Generator().manual_seed(1)
    shapes = {k: v for k, v in bagel_shapes().items() if not k.startswith(UND_PREFIXES)} | vit_shapes()
    sd = {k: torch.randn(shape, generator=g) for k, shape in shapes.items()}
    sd["latent_pos_embed.pos_embed"] = torch.from_numpy(mae_table(D, MAXLAT))
    sd[VIT_POS_KEY] = torch.from_numpy(mae_table(D, VS))
    d = tmp_path / "bagel_vit"
    d.mkdir()
    save_file(sd, str(d / "ema.safetensors"))
    (d / "llm_config.json").write_text(json.dumps(llm_config()))
    (d / "vit_config.json").write_text(json.dumps(VIT_CONFIG))
    return d, sd


def test_vit_checkpoint_loads_every_key_and_round_trips_bit_exactly(bagel_vit_dir, tmp_path, caplog):
    d, sd = bagel_vit_dir
    model = build_model(vit_cfg())
    load_bagel(model, d)
    assert "understanding-path" not in caplog.text                     # nothing skipped
    p = "vit_model.vision_model.encoder.layers.1.self_attn."
    assert torch.equal(model.vit.layers[1].qkv.weight, torch.cat([sd[f"{p}{x}_proj.weight"] for x in "qkv"]))
    assert torch.equal(model.vit.layers[1].out.bias, sd[f"{p}out_proj.bias"])
    patch = sd["vit_model.vision_model.embeddings.patch_embedding.weight"]
    assert torch.equal(model.vit.patch_embed.weight, patch)
    assert torch.equal(model.connector.fc1.weight, sd["connector.fc1.weight"])

    out = export_bagel(model, tmp_path / "out")                         # no template: all from the model
    back = load_file(str(out / "ema.safetensors"))
    assert back.keys() == sd.keys()                                     # zero missing, zero unexpected
    assert all(torch.equal(back[k], sd[k]) for k in sd)                 # bit-exact, both sin-cos tables too
    written = json.loads((out / "vit_config.json").read_text())
    assert {k: written[k] for k in VIT_CONFIG} == VIT_CONFIG            # what BAGEL's loader reads
    again = build_model(vit_cfg())
    load_bagel(again, out)
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    with torch.no_grad():                                               # fine-tuned ViT weights win over
        model.vit.post_norm.weight.add_(1.0)                            # the template's
    out2 = export_bagel(model, tmp_path / "out2", template=d)
    back = load_file(str(out2 / "ema.safetensors"))
    assert back.keys() == sd.keys()
    assert torch.equal(back["vit_model.vision_model.post_layernorm.weight"], model.vit.post_norm.weight)
    assert (out2 / "vit_config.json").read_text() == (d / "vit_config.json").read_text()


def test_vit_conv_patch_embedding_is_flattened(bagel_vit_dir):
    _, sd = bagel_vit_dir
    key = "vit_model.vision_model.embeddings.patch_embedding.weight"
    conv = sd[key].view(VW, VP, VP, 3).permute(0, 3, 1, 2).contiguous()   # SigLIP's Conv2d (W, 3, p, p)
    model = build_model(vit_cfg())
    load_bagel_state_dict(model, sd | {key: conv})
    assert torch.equal(model.vit.patch_embed.weight, sd[key])


def test_vit_mismatches_are_clear_errors(bagel_vit_dir, caplog):
    d, sd = bagel_vit_dir
    model = build_model(vit_cfg())
    msg = _err(model, {k: v for k, v in sd.items() if not k.startswith("connector.")})
    assert "4 missing key(s): connector.fc1.bias, connector.fc1.weight" in msg
    msg = _err(model, sd | {VIT_POS_KEY: torch.zeros(VS * VS, D)})
    assert f"{VIT_POS_KEY} differs from the model's 2-D sin-cos table" in msg
    msg = _err(build_model(vit_cfg(vit_max_patches_per_side=4)), sd)
    assert f"position_embedding.weight ({VS * VS}, {VW}) vs model (16, {VW})" in msg
    (d / "vit_config.json").write_text(json.dumps(VIT_CONFIG | {"num_hidden_layers": VL}))
    with pytest.raises(BagelFormatError, match="model.vit_num_layers=2 vs num_hidden_layers=2 .BAGEL runs"):
        load_bagel(build_model(vit_cfg()), d)
    # A model without the ViT path takes the LLM and glue, and reports the ViT tensors it skipped.
    load_bagel(build_model(tiny_cfg()), d)
    assert f"{len(vit_shapes()) + 1} understanding-path tensors" in caplog.text
