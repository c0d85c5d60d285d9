"""Loss curves of the `debug` preset under 2-process DDP and on one process, for test_ddp_curve.py.

    torchrun --nproc_per_node 2 ddp_curve_worker.py CACHE_DIR OUT.json   # DDP (gloo): rank r trains on
                                                                         # its own packs of its stream
    python ddp_curve_worker.py CACHE_DIR OUT.json --single               # one process, each step on
                                                                         # both ranks' packs merged

Same init, same packs, same flow noise: the single process sees the global batch of the two ranks
as one packed sequence (samples attend only inside themselves, so merging packs changes no token's
output), so with the global per-token means of training/losses.py both runs take the same steps and
write the same curve of (loss, CE, MSE). The data (CACHE_DIR) is built by the test beforehand.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from procpaint.config import load_config
from procpaint.sequence.types import PackedBatch
from procpaint.training.datamodule import PackStream, ProcPaintDataModule
from procpaint.training.losses import packed_loss

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "train/configs/debug.yaml"
STEPS, WORLD = 20, 2


def debug_config(cache_dir: Path):
    return load_config(DEBUG, [f"data.cache_dir={cache_dir}"])


def merge(a: PackedBatch, b: PackedBatch) -> PackedBatch:
    """One packed sequence holding ``a``'s samples then ``b``'s (positions of ``b`` shifted by a's length)."""
    la, ia = a.seq_len, len(a.images)

    def cat(name: str, shift: int = 0) -> torch.Tensor:
        x, y = getattr(a, name), getattr(b, name)
        y = y + shift if shift else y                                        # keeps bool as bool
        return torch.cat([t for t in (x, y) if t.numel()] or [x])            # a pack may hold no image
    return PackedBatch(
        seq_len=la + b.seq_len, sample_lens=a.sample_lens + b.sample_lens,
        split_lens=a.split_lens + b.split_lens, attn_modes=a.attn_modes + b.attn_modes,
        text_ids=cat("text_ids"), text_indexes=cat("text_indexes", la),
        position_ids=cat("position_ids"), latent_indexes=cat("latent_indexes", la),
        latent_image_ids=cat("latent_image_ids", ia), latent_patch_ids=cat("latent_patch_ids"),
        latent_timesteps=cat("latent_timesteps"), latent_noised=cat("latent_noised"), images=cat("images"),
        ce_indexes=cat("ce_indexes", la), ce_labels=cat("ce_labels"),
        num_real_tokens=a.num_real_tokens + b.num_real_tokens,
        num_samples=a.num_samples + b.num_samples)


def main(cache_dir: Path, out: Path, single: bool) -> None:
    torch.set_num_threads(1)
    cfg = debug_config(cache_dir)
    dm = ProcPaintDataModule(cfg)
    tok = dm.load_tokenizer()
    mc = cfg.model_config(vocab_size=tok.vocab_size, **dm.latent_stats())
    if not single:
        dist.init_process_group("gloo")
    rank = 0 if single else dist.get_rank()

    def packs(r: int) -> list[PackedBatch]:   # rank r's first STEPS packs, as its DataLoader yields them
        stream = PackStream(cfg, dm.root, tok, rank=r, world_size=WORLD)
        return list(itertools.islice(iter(stream), STEPS))

    def noise(pack: PackedBatch, step: int, r: int) -> torch.Tensor:        # (M, D_lat)
        g = torch.Generator().manual_seed(1000 * step + r)
        return torch.randn(int(pack.latent_noised.sum()), mc.latent_dim, generator=g)

    if single:
        a, b = packs(0), packs(1)
        batches = [merge(x, y) for x, y in zip(a, b)]
        noises = [torch.cat([noise(x, s, 0), noise(y, s, 1)]) for s, (x, y) in enumerate(zip(a, b))]
    else:
        batches = packs(rank)
        noises = [noise(x, s, rank) for s, x in enumerate(batches)]

    from procpaint.model import build_model

    torch.manual_seed(cfg.seed)
    model = build_model(mc)
    o = cfg.optim
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                            weight_decay=o.weight_decay)
    if not single:
        model = torch.nn.parallel.DistributedDataParallel(model)
    curve = []
    for step, (batch, z) in enumerate(zip(batches, noises)):
        out_ = model(batch, noise=z)
        parts = packed_loss(out_.ce_logits, batch.ce_labels, out_.v_pred, out_.clean, out_.noise,
                            lambda_ce=cfg.loss.lambda_ce)
        opt.zero_grad(set_to_none=True)
        parts.loss.backward()
        opt.step()
        curve.append({"step": step, "loss": parts.value, "ce": parts.ce.item(), "mse": parts.mse.item(),
                      })
    if rank == 0:
        out.write_text(json.dumps(curve))
    if not single:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), "--single" in sys.argv[3:])
