"""One model call for many trajectory branches at once, with a per-branch KV cache.

Inference builds exactly the layout training uses (docs/ARCHITECTURE.md, "The packed sequence"): text advances
the RoPE id by one per token; an image split ``<|vision_start|> + h*w latents + <|vision_end|>``
shares one id; a noised split being sampled does not advance it and its clean copy reuses the id; with
the ViT path (``model.vit``) the clean copy is followed by the image's ViT split (:class:`VitSpan`, the
next id), as the packer lays it out.

Every call runs a list of :class:`Query` — the new splits of one *branch* (a trajectory's main
context, or one of its CFG branches) — packed into one sequence for the per-token work (embeddings,
projections, MLPs: one matmul over every query's tokens). Attention is per query: its keys are

    cache part:  the first ``limit`` rows of its owner's cache (its context so far)
    new part:    the mask rule within the query's own splits (causal text, a full/noise split sees
                 itself whole, nobody else sees a noise split; ``kernels.masks.attention_mask``
                 with the query as one sample), never another query's tokens

so a text-CFG branch reads a *prefix* of its trajectory's cache through ``limit`` (the context as it
was at the last image) instead of keeping a copy, and the work of a call grows linearly with the
number of queries (each attends only its own context), not quadratically as one packed mask would.

The cache (:class:`BranchCache`) keeps, per owner and per layer, head-major key/value buffers with
spare capacity. A call writes each query's new keys after its owner's rows, attends to a view of the
buffer, and keeps (moves into place) the non-noise rows of writing queries; nothing of the cache is
copied per call. RoPE is applied before caching.

Without a cache (``use_cache=False`` in the config) callers pass each branch's whole context as new
splits: the same rule, recomputed every call — the reference the cache is tested against.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from procpaint.kernels import masks
from procpaint.kernels.modes import Mode
from procpaint.model import ProcPaintModel, Routing
from procpaint.model.vit import vit_inputs


@dataclass
class TextSpan:
    ids: list[int]                    # token ids
    pos0: int                         # RoPE id of the first token

    @property
    def num_tokens(self) -> int:
        return len(self.ids)


@dataclass
class ImageSpan:
    z: torch.Tensor                   # (h*w, D_lat) float32 latents at flow time t
    t: float                          # 1 = noise, 0 = clean
    pos: int                          # the split's one RoPE id
    grid: tuple[int, int]             # (h, w) latent tokens
    noise: bool                       # a noised split being sampled (never cached)

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1] + 2


@dataclass
class VitSpan:
    """A clean image read through the ViT (``model.vit``): ``<|vision_start|>`` + h*w ViT tokens +
    ``<|vision_end|>``, one full split on the understanding expert (the packer's ViT split)."""

    patches: torch.Tensor             # (h*w, p*p*3) float32 (procpaint.model.vit.vit_inputs)
    ids: torch.Tensor                 # (h*w,) int64 grid ids
    pos: int                          # the split's one RoPE id

    @classmethod
    def of_image(cls, image: torch.Tensor, pos: int, cfg) -> VitSpan:
        """The ViT split of ``image`` (3, H, W) in [-1, 1] for a model config with ``vit``."""
        patches, ids, _ = vit_inputs(image, cfg.vit_patch_size, cfg.vit_max_patches_per_side)
        return cls(patches, ids, pos)

    @property
    def num_tokens(self) -> int:
        return self.patches.shape[0] + 2


Seg = TextSpan | ImageSpan | VitSpan


def seg_mode(seg: Seg) -> Mode:
    """The attention mode of a split."""
    if isinstance(seg, TextSpan):
        return Mode.CAUSAL
    if isinstance(seg, VitSpan):
        return Mode.FULL
    return Mode.NOISE if seg.noise else Mode.FULL


@dataclass
class Query:
    segs: list[Seg]                   # the new splits of one branch, in order
    owner: int = -1                   # cache owner whose rows it reads (-1: none)
    limit: int = 1 << 62              # reads the owner's first ``limit`` rows
    write: bool = False               # append its non-noise tokens to ``owner``'s cache rows

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.segs)


@dataclass
class _Rows:
    """One owner's cache: per layer (Hkv, capacity, hd) key and value buffers, ``length`` rows used."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    length: int = 0

    @property
    def capacity(self) -> int:
        return self.k[0].shape[1]


@dataclass
class BranchCache:
    """Keys/values of every live branch, per owner (a trajectory's main context or a CFG branch)."""

    rows: dict[int, _Rows] = field(default_factory=dict)

    @property
    def length(self) -> int:
        """Rows held, all owners together."""
        return sum(r.length for r in self.rows.values())

    def length_of(self, owner: int) -> int:
        r = self.rows.get(owner)
        return 0 if r is None else r.length

    def nbytes(self, owner: int | None = None, *, allocated: bool = False) -> int:
        """Bytes of keys+values held by ``owner`` (all owners if None): used rows, or allocated capacity."""
        total = 0
        for o, r in self.rows.items():
            if owner is not None and o != owner:
                continue
            n = r.capacity if allocated else r.length
            total += sum(2 * k.shape[0] * n * k.shape[2] * k.element_size() for k in r.k)
        return total

    def reserve(self, owner: int, rows: int, like: list[tuple[int, int, torch.dtype, torch.device]]) -> _Rows:
        """The owner's buffers with room for ``rows`` more rows (capacity doubles; rows kept)."""
        r = self.rows.get(owner)
        need = (0 if r is None else r.length) + rows
        if r is not None and need <= r.capacity:
            return r
        cap = max(64, need, 2 * (0 if r is None else r.capacity))
        k = [torch.empty(h, cap, d, dtype=dt, device=dev) for h, d, dt, dev in like]
        v = [torch.empty_like(x) for x in k]
        n = 0 if r is None else r.length
        if n:
            for i in range(len(k)):
                k[i][:, :n] = r.k[i][:, :n]
                v[i][:, :n] = r.v[i][:, :n]
        self.rows[owner] = _Rows(k, v, n)
        return self.rows[owner]

    def fork(self, src: int, dst: int) -> None:
        """Copy ``src``'s rows under the new owner ``dst`` (a CFG branch that starts as a copy)."""
        r = self.rows.get(src)
        if r is None:
            return
        n = r.length
        self.rows[dst] = _Rows([k.clone() for k in r.k], [v.clone() for v in r.v], n)

    def drop(self, owners: list[int]) -> None:
        """Forget finished branches."""
        for o in owners:
            self.rows.pop(o, None)


class _CallKV:
    """Attention of one call: each query against its owner's cache rows and its own new tokens.

    Given to the model as ``forward_hidden(kv=...)``; every layer calls :meth:`attend`.
    """

    def __init__(self, cache: BranchCache, queries: list[Query], spans: list[tuple[int, int]],
                 masks: list[torch.Tensor | None], device: torch.device):
        self.cache, self.queries, self.spans, self.device = cache, queries, spans, device
        # Per query: its owner's rows (None: no cache), where its new rows go in the owner's buffer
        # (start; -1: a scratch copy, see attend), how many cached rows it sees, and its key mask.
        self.slots: list[tuple[_Rows | None, int, int]] = []
        self.masks: list[torch.Tensor | None] = []
        offset: dict[int, int] = {}
        for q, (a, b), new_mask in zip(queries, spans, masks):
            n = b - a
            r = cache.rows.get(q.owner) if q.owner >= 0 else None
            if r is None:
                self.slots.append((None, 0, 0))
                self.masks.append(new_mask)
                continue
            visible = min(q.limit, r.length)
            start = r.length + offset.get(q.owner, 0)
            if visible != start and not q.write:
                # A prefix reader (text CFG) that keeps nothing: keys = the visible prefix followed by
                # its own rows, copied (no mask over rows it must not see, fewer keys).
                self.slots.append((r, -1, visible))
                self.masks.append(None if new_mask is None else
                                  torch.cat([torch.ones(n, visible, dtype=torch.bool, device=device),
                                             new_mask], dim=1))
                continue
            offset[q.owner] = offset.get(q.owner, 0) + n
            if visible == start:                      # the whole prefix, then the rule on its own rows
                self.masks.append(new_mask if new_mask is None or visible == 0 else
                                  torch.cat([torch.ones(n, visible, dtype=torch.bool, device=device),
                                             new_mask], dim=1))
            else:                                     # a second writer of one owner in one call
                m = torch.zeros(n, start + n, dtype=torch.bool)
                m[:, :visible] = True
                m[:, start:] = True if new_mask is None else new_mask.cpu()
                self.masks.append(m.to(device))
            self.slots.append((r, start, visible))

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (L, H, hd), k/v (L, Hkv, hd) of this call's tokens in sequence order -> (L, H, hd)."""
        outs = []
        for (a, b), (r, start, visible), mask in zip(self.spans, self.slots, self.masks):
            kq, vq = k[a:b].transpose(0, 1), v[a:b].transpose(0, 1)          # (Hkv, n, hd)
            if r is not None:
                kb, vb = r.k[layer], r.v[layer]
                if start < 0:                                                # scratch copy
                    kq, vq = torch.cat([kb[:, :visible], kq], dim=1), torch.cat([vb[:, :visible], vq], dim=1)
                else:
                    kb[:, start:start + b - a] = kq
                    vb[:, start:start + b - a] = vq
                    kq, vq = kb[:, :start + b - a], vb[:, :start + b - a]
            o = F.scaled_dot_product_attention(q[a:b].transpose(0, 1)[None], kq[None], vq[None],
                                               attn_mask=mask, enable_gqa=True)   # (1, H, n, hd)
            outs.append(o[0].transpose(0, 1))
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def commit(self, keep: list[torch.Tensor | None]) -> None:
        """Keep the rows ``keep[i]`` (indexes into query i's new tokens; None: none) of each query, in
        query order after its owner's rows."""
        kept: dict[int, list[torch.Tensor]] = {}
        for q, (r, start, _), rows in zip(self.queries, self.slots, keep):
            if r is None or start < 0 or rows is None or rows.numel() == 0:
                continue
            kept.setdefault(q.owner, []).append(start + rows)
        for owner, parts in kept.items():
            r = self.cache.rows[owner]
            idx = torch.cat(parts).to(r.k[0].device)
            n = idx.numel()
            if not torch.equal(idx.cpu(), torch.arange(r.length, r.length + n)):   # move into place
                for bufs in (r.k, r.v):
                    for buf in bufs:
                        buf[:, r.length:r.length + n] = buf.index_select(1, idx)
            r.length += n


class Engine:
    """Runs packed :class:`Query` lists through a :class:`ProcPaintModel`; counts calls and tokens."""

    def __init__(self, model: ProcPaintModel, vision_start_id: int, vision_end_id: int):
        self.model = model
        self.vs, self.ve = vision_start_id, vision_end_id
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        cfg = model.cfg
        self._kv_like = [(cfg.num_kv_heads, cfg.head_dim, self.dtype, self.device)] * cfg.num_layers
        self.cache = BranchCache()
        self.calls = 0
        self.timings: dict[str, float] = defaultdict(float)   # seconds per part of a call (profiling)
        self._masks: dict[tuple, torch.Tensor | None] = {}

    def reset(self) -> None:
        self.cache = BranchCache()

    # ------------------------------------------------------------------------------ packing
    def _embed(self, queries: list[Query]):
        """Embeddings (L, D), RoPE ids (L,), latent flags (L,): every query's splits in order, with one
        embedding call for all text tokens, one for all latent tokens and one for all ViT tokens."""
        m, dev = self.model, self.device
        ids, text_at, pos = [], [], []
        zs, ts, t_idx, patch, widths, lat_at = [], [], [], [], [], []
        vit_x, vit_ids, vit_lens, vit_at = [], [], [], []
        n = 0
        for q in queries:
            for seg in q.segs:
                k = seg.num_tokens
                if isinstance(seg, TextSpan):
                    ids += seg.ids
                    text_at.append(torch.arange(n, n + k))
                    pos.append(torch.arange(seg.pos0, seg.pos0 + k))
                elif isinstance(seg, VitSpan):
                    ids += [self.vs, self.ve]
                    text_at.append(torch.tensor([n, n + k - 1]))
                    vit_at.append(torch.arange(n + 1, n + k - 1))
                    vit_x.append(seg.patches)
                    vit_ids.append(seg.ids)
                    vit_lens.append(k - 2)
                    pos.append(torch.full((k,), seg.pos))
                else:
                    h, w = seg.grid
                    hw = h * w
                    ids += [self.vs, self.ve]
                    text_at.append(torch.tensor([n, n + k - 1]))
                    lat_at.append(torch.arange(n + 1, n + 1 + hw))
                    zs.append(seg.z)
                    t_idx.append(torch.full((hw,), len(ts)))
                    ts.append(float(seg.t))
                    patch.append(torch.arange(hw))
                    widths.append(torch.full((hw,), w))
                    pos.append(torch.full((k,), seg.pos))
                n += k
        text_emb = m.embed_text(torch.tensor(ids, dtype=torch.long, device=dev))        # (T, D)
        lat = torch.zeros(n, dtype=torch.bool)
        if not zs and not vit_x:
            return text_emb, torch.cat(pos), lat
        lat_emb, lat_idx = None, torch.zeros(0, dtype=torch.long)
        if zs:
            lat_idx = torch.cat(lat_at)
            lat[lat_idx] = True
            lat_emb = m.embed_latents(torch.cat(zs).to(dev), torch.tensor(ts, device=dev),
                                      torch.cat(patch).to(dev), torch.cat(widths).to(dev),
                                      time_index=torch.cat(t_idx).to(dev))            # (N, D)
        vit_emb = vit_idx = None
        if vit_x:
            vit_emb = m.embed_vit(torch.cat(vit_x).to(dev), torch.cat(vit_ids).to(dev), vit_lens)  # (V, D)
            vit_idx = torch.cat(vit_at).to(dev)
        hidden = m.embed(text_emb, torch.cat(text_at).to(dev), lat_emb, lat_idx.to(dev), n, vit_emb, vit_idx)
        return hidden, torch.cat(pos), lat

    def _new_mask(self, q: Query) -> torch.Tensor | None:
        """(n, n) bool of the packing rule within the query's splits (None when all True)."""
        lens = tuple(s.num_tokens for s in q.segs)
        modes = tuple(seg_mode(s) for s in q.segs)
        key = (lens, modes)
        if key not in self._masks:
            if len(lens) == 1 and (modes[0] != Mode.CAUSAL or lens[0] == 1):
                self._masks[key] = None               # one full/noise split, or one text token
            else:
                mask = masks.attention_mask(list(lens), list(modes), [sum(lens)])
                self._masks[key] = None if bool(mask.all()) else mask.to(self.device)
            if len(self._masks) > 4096:               # no-cache contexts grow without bound
                self._masks.pop(next(iter(self._masks)))
        return self._masks[key]

    # ------------------------------------------------------------------------------- a call
    @torch.no_grad()
    def run(self, queries: list[Query]) -> list[torch.Tensor]:
        """One model call; returns each query's final hidden states (n_q, D) in split order."""
        tm, t0 = self.timings, time.perf_counter()
        hidden, pos, lat = self._embed(queries)
        dev = self.device
        sizes = [q.num_tokens for q in queries]
        bounds = torch.tensor([0, *sizes]).cumsum(0).tolist()
        spans = list(zip(bounds[:-1], bounds[1:]))
        t1 = time.perf_counter()
        new_rows: dict[int, int] = {}                # room for every new row (written or scratch)
        for q, n in zip(queries, sizes):
            if q.owner >= 0:
                new_rows[q.owner] = new_rows.get(q.owner, 0) + n
        for owner, n in new_rows.items():
            self.cache.reserve(owner, n, self._kv_like)
        call = _CallKV(self.cache, queries, spans, [self._new_mask(q) for q in queries], dev)
        routing = Routing.build((~lat).nonzero().squeeze(1).to(dev), lat.nonzero().squeeze(1).to(dev),
                                hidden.shape[0], self.model.cfg.mot)
        t2 = time.perf_counter()
        out, _ = self.model.forward_hidden(hidden, pos.to(dev), routing, None, kv=call)
        t3 = time.perf_counter()
        self.calls += 1
        call.commit([self._kept(q) if q.write else None for q in queries])
        tm["embed"] += t1 - t0
        tm["masks + cache slots"] += t2 - t1
        tm["transformer"] += t3 - t2
        tm["cache writes"] += time.perf_counter() - t3
        return list(out.split(sizes))

    @staticmethod
    def _kept(q: Query) -> torch.Tensor:
        """Indexes of a writing query's non-noise tokens (noise splits are never cached)."""
        keep, n = [], 0
        for s in q.segs:
            if not (isinstance(s, ImageSpan) and s.noise):
                keep.append(torch.arange(n, n + s.num_tokens))
            n += s.num_tokens
        return torch.cat(keep) if keep else torch.zeros(0, dtype=torch.long)
