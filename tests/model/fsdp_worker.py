"""One rank of tests/model/test_parallel.py: ``torchrun --nproc_per_node 2 fsdp_worker.py OUT_DIR``.

Builds the `debug` model sharded with FSDP2 over 2 CPU ranks (gloo) on the meta device, loads a
BAGEL-format directory into the shards, and compares with the same model unsharded: weights,
loss, every gradient, the global gradient norm and one optimizer step. Rank 0 writes
``OUT_DIR/result.json``; any failed check raises (non-zero exit).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import DEFAULT_SPEC, VOCAB, build_pack, random_images  # noqa: E402

from procpaint.model import build_model, model_config  # noqa: E402
from procpaint.model.bagel_io import export_bagel  # noqa: E402
from procpaint.model.parallel import apply_fsdp, full_state_dict, global_grad_norm, is_dtensor, local  # noqa: E402
from procpaint.training.losses import packed_loss  # noqa: E402


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    cfg = model_config("debug", vocab_size=VOCAB, attn_backend="sdpa", tie_word_embeddings=False,
                       qkv_bias=True, sincos_order="col_row")
    torch.manual_seed(0)
    plain = build_model(cfg)
    with torch.no_grad():                          # non-trivial glue (llm2vae starts at zero)
        for p in plain.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    bagel = out / "bagel"
    if rank == 0:
        export_bagel(plain, bagel)
    dist.barrier()

    # Sharded: nothing of the model is allocated before fully_shard; weights land in the shards.
    torch.manual_seed(1 + rank)                    # init differs per rank; init_from overwrites it
    sharded = build_model(cfg.__class__(**{**cfg.__dict__, "init_from": str(bagel)}),
                          parallelize=lambda m: apply_fsdp(m, mesh))
    params = dict(sharded.named_parameters())
    assert all(is_dtensor(p) for p in params.values()), [k for k, p in params.items() if not is_dtensor(p)]
    local_numel = sum(local(p).numel() for p in params.values())
    total = sum(p.numel() for p in plain.parameters())
    full = full_state_dict(sharded)
    if rank == 0:
        ref = plain.state_dict()
        assert full.keys() == ref.keys(), sorted(full.keys() ^ ref.keys())
        bad = [k for k in ref if not torch.equal(full[k], ref[k])]
        assert not bad, f"sharded weights differ from the loaded checkpoint: {bad[:5]}"

    # A sharded fresh init (no init_from) draws each shard anew: rows must not repeat across shards.
    torch.manual_seed(0)
    fresh = full_state_dict(build_model(cfg, parallelize=lambda m: apply_fsdp(m, mesh)))
    if rank == 0:
        w = fresh["embed_tokens.weight"]
        init = dict(rows_repeat=bool(torch.equal(w[: VOCAB // 2], w[VOCAB // 2:])), std=float(w.std()))

    # With the ViT path: every ViT layer is an FSDP unit of its own, and nothing is left unsharded.
    from torch.distributed.fsdp import FSDPModule

    vcfg = model_config("debug-vit", vocab_size=VOCAB, attn_backend="sdpa")
    vmodel = build_model(vcfg, parallelize=lambda m: apply_fsdp(m, mesh))
    vit_units = dict(vit_layers=len(vmodel.vit.layers),
                     vit_units=sum(isinstance(m, FSDPModule) for m in vmodel.vit.layers),
                     decoder_units=sum(isinstance(m, FSDPModule) for m in vmodel.layers),
                     unsharded=[k for k, p in vmodel.named_parameters() if not is_dtensor(p)])

    # Same pack on both ranks: FSDP's averaged gradient equals the single-process one.
    pack = build_pack(DEFAULT_SPEC, random_images(3), pad=5)
    noise_n = int(pack.latent_noised.sum())
    noise = torch.randn(noise_n, cfg.latent_dim, generator=torch.Generator().manual_seed(3))
    losses, norms = [], []
    for model in (plain, sharded):
        out_ = model(pack, noise=noise)
        parts = packed_loss(out_.ce_logits, pack.ce_labels, out_.v_pred, out_.clean, out_.noise,
                            lambda_ce=1.0)
        parts.loss.backward()
        losses.append(float(parts.loss))
        norms.append(float(global_grad_norm(model.parameters())))
    grads = {k: (p.grad.full_tensor() if is_dtensor(p.grad) else p.grad)
             for k, p in sharded.named_parameters()}
    ref_grads = dict((k, p.grad) for k, p in plain.named_parameters())
    grad_err = max(float((grads[k] - ref_grads[k]).abs().max()) for k in ref_grads)
    # One AdamW step on each: the sharded optimizer states give the same weights.
    for model in (plain, sharded):
        torch.optim.AdamW(model.parameters(), lr=1e-2).step()
    after = full_state_dict(sharded)
    if rank == 0:
        step_err = max(float((after[k] - v).abs().max()) for k, v in plain.state_dict().items())
        result = dict(world=world, total_params=total, local_params=local_numel, losses=losses,
                      grad_norms=norms, max_grad_err=grad_err, max_step_err=step_err, init=init,
                      vit=vit_units)
        (out / "result.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(Path(sys.argv[1]))
