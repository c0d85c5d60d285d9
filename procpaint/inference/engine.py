"""One model call for many trajectory branches at once, with an append-only packed KV cache.

Inference builds exactly the layout training uses (DESIGN.md, "The packed sequence"): text advances
the RoPE id by one per token; an image split ``<|vision_start|> + h*w latents + <|vision_end|>``
shares one id; a noised split being sampled does not advance it and its clean copy reuses the id.

Every call runs a list of :class:`Query` — the new splits of one *branch* (a trajectory's main
context, or one of its CFG branches) — packed into one sequence. Keys are the packed cache followed
by the new tokens; the (Lq, Lp + Lq) mask is

    cache part:  key k belongs to the query's cache owner and k.serial < query.limit
    new part:    the mask rule within the query's own splits (causal text, a full/noise split sees
                 itself whole, nobody else sees a noise split), never across queries

so a text-CFG branch reads a *prefix* of its trajectory's cache through ``limit`` (the context as it
was at the last image) instead of keeping a copy. The cache is append-only and interleaves owners;
rows are told apart by ``owner`` / ``serial``, so order in it does not matter (RoPE is applied before
caching). Noise splits are never written; everything else of a writing query is.

Without a cache (``use_cache=False`` in the config) callers pass each branch's whole context as new
splits: the same rule, recomputed every call — the reference the cache is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from procpaint.model import AttnContext, ProcPaintModel, Routing

CAUSAL, FULL, NOISE = 0, 1, 2


@dataclass
class TextSeg:
    ids: list[int]                    # token ids
    pos0: int                         # RoPE id of the first token

    @property
    def num_tokens(self) -> int:
        return len(self.ids)


@dataclass
class ImageSeg:
    z: torch.Tensor                   # (h*w, D_lat) float32 latents at flow time t
    t: float                          # 1 = noise, 0 = clean
    pos: int                          # the split's one RoPE id
    grid: tuple[int, int]             # (h, w) latent tokens
    noise: bool                       # a noised split being sampled (never cached)

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1] + 2


Seg = TextSeg | ImageSeg


@dataclass
class Query:
    segs: list[Seg]                   # the new splits of one branch, in order
    owner: int = -1                   # cache owner whose rows it reads (-1: none)
    limit: int = 1 << 62              # reads rows with serial < limit
    write: bool = False               # append its non-noise tokens to ``owner``'s cache rows

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.segs)


@dataclass
class PackedCache:
    """Per layer (k, v) (Lp, Hkv, hd), plus each row's owner and serial (its index in the owner's context)."""

    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    owner: torch.Tensor | None = None       # (Lp,) int64, on the CPU (masks are built there)
    serial: torch.Tensor | None = None      # (Lp,) int64, on the CPU
    next_serial: dict[int, int] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return 0 if self.owner is None else int(self.owner.numel())

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (CPU int64 indexes into the cache), in that order."""
        dev_rows = rows.to(self.kv[0][0].device)
        self.kv = [(k.index_select(0, dev_rows), v.index_select(0, dev_rows)) for k, v in self.kv]
        self.owner, self.serial = self.owner.index_select(0, rows), self.serial.index_select(0, rows)

    def fork(self, src: int, dst: int) -> None:
        """Copy ``src``'s rows under the new owner ``dst`` (a CFG branch that starts as a copy)."""
        self.next_serial[dst] = self.next_serial.get(src, 0)
        if self.length == 0:
            return
        rows = (self.owner == src).nonzero().squeeze(1)
        dev_rows = rows.to(self.kv[0][0].device)
        self.kv = [(torch.cat([k, k[dev_rows]]), torch.cat([v, v[dev_rows]])) for k, v in self.kv]
        self.owner = torch.cat([self.owner, torch.full_like(rows, dst)])
        self.serial = torch.cat([self.serial, self.serial[rows]])

    def drop(self, owners: list[int]) -> None:
        """Forget finished branches (their rows would still cost attention work)."""
        if self.length == 0 or not owners:
            return
        keep = ~torch.isin(self.owner, torch.tensor(owners))
        for o in owners:
            self.next_serial.pop(o, None)
        self.select(keep.nonzero().squeeze(1))


class Engine:
    """Runs packed :class:`Query` lists through a :class:`ProcPaintModel`; counts calls and tokens."""

    def __init__(self, model: ProcPaintModel, vision_start_id: int, vision_end_id: int):
        self.model = model
        self.vs, self.ve = vision_start_id, vision_end_id
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        # Inference builds its own (Lq, Lp + Lq) masks; only sdpa and xformers take a dense one.
        self.backend = "xformers" if model.attn_backend == "xformers" else "sdpa"
        self.cache = PackedCache()
        self.calls = 0

    def reset(self) -> None:
        self.cache = PackedCache()

    # ------------------------------------------------------------------------------ packing
    def _embed(self, queries: list[Query]):
        """Embeddings (L, D), RoPE ids (L,), latent flags (L,), query id / split id / mode per token."""
        m, dev = self.model, self.device
        parts, pos, lat, qid, sid, mode = [], [], [], [], [], []
        n_split = 0
        for qi, q in enumerate(queries):
            for seg in q.segs:
                n = seg.num_tokens
                if isinstance(seg, TextSeg):
                    ids = torch.tensor(seg.ids, dtype=torch.long, device=dev)
                    parts.append(m.embed_text(ids))                                   # (n, D)
                    pos.append(torch.arange(seg.pos0, seg.pos0 + n))
                    lat.append(torch.zeros(n, dtype=torch.bool))
                    mode.append(torch.full((n,), CAUSAL))
                else:
                    h, w = seg.grid
                    marks = m.embed_text(torch.tensor([self.vs, self.ve], device=dev))   # (2, D)
                    hw = h * w
                    z = m.embed_latents(seg.z.to(dev), torch.full((hw,), float(seg.t), device=dev),
                                        torch.arange(hw, device=dev), w)              # (hw, D)
                    parts.append(torch.cat([marks[:1], z.to(marks.dtype), marks[1:]]))
                    pos.append(torch.full((n,), seg.pos))
                    lat.append(torch.cat([torch.zeros(1, dtype=torch.bool), torch.ones(hw, dtype=torch.bool),
                                          torch.zeros(1, dtype=torch.bool)]))
                    mode.append(torch.full((n,), NOISE if seg.noise else FULL))
                qid.append(torch.full((n,), qi))
                sid.append(torch.full((n,), n_split))
                n_split += 1
        cat = torch.cat
        return cat(parts), cat(pos), cat(lat), cat(qid), cat(sid), cat(mode)

    def _mask(self, queries: list[Query], qid, sid, mode) -> torch.Tensor:
        """(Lq, Lp + Lq) bool: cache visibility per query, then the packing rule on the new tokens."""
        lq = qid.numel()
        idx = torch.arange(lq)
        same_q = qid[:, None] == qid[None, :]
        same_s = sid[:, None] == sid[None, :]
        new = same_q & ((idx[None, :] <= idx[:, None]) | (same_s & (mode[None, :] != CAUSAL)))
        new &= ~((mode[None, :] == NOISE) & ~same_s)                                  # (Lq, Lq)
        c = self.cache
        if c.length == 0:
            return new.to(self.device)
        vis = torch.stack([(c.owner == q.owner) & (c.serial < q.limit) for q in queries])  # (Q, Lp)
        return torch.cat([vis[qid], new], dim=1).to(self.device)

    # ------------------------------------------------------------------------------- a call
    @torch.no_grad()
    def run(self, queries: list[Query]) -> list[torch.Tensor]:
        """One model call; returns each query's final hidden states (n_q, D) in split order."""
        hidden, pos, lat, qid, sid, mode = self._embed(queries)
        dev = self.device
        routing = Routing.build((~lat).nonzero().squeeze(1).to(dev), lat.nonzero().squeeze(1).to(dev),
                                hidden.shape[0], self.model.cfg.mot)
        attn = AttnContext.from_dense(self._mask(queries, qid, sid, mode), self.backend, self.dtype)
        write = any(q.write for q in queries)
        past = self.cache.kv if self.cache.length else None
        out, presents = self.model.forward_hidden(hidden, pos.to(dev), routing, attn,
                                                  past_key_values=past, use_cache=write)
        self.calls += 1
        if write:
            self._append(queries, presents, qid, mode)
        return list(out.split([q.num_tokens for q in queries]))

    def _append(self, queries: list[Query], presents, qid, mode) -> None:
        """Keep the cache rows plus the written queries' non-noise rows of ``presents``."""
        c, lp = self.cache, self.cache.length
        writes = torch.tensor([q.write for q in queries])
        keep_new = writes[qid] & (mode != NOISE)                                      # (Lq,)
        new_rows = keep_new.nonzero().squeeze(1)
        owners = torch.tensor([q.owner for q in queries])[qid[new_rows]]
        serial = torch.empty_like(owners)
        for o in owners.unique().tolist():                     # serials continue per owner
            sel = owners == o
            start = c.next_serial.get(o, 0)
            serial[sel] = torch.arange(start, start + int(sel.sum()))
            c.next_serial[o] = start + int(sel.sum())
        dev = self.device
        c.kv = list(presents)
        if new_rows.numel() != qid.numel():
            rows = torch.cat([torch.arange(lp), lp + new_rows]).to(dev)
            c.kv = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in c.kv]
        old_o = c.owner if lp else torch.zeros(0, dtype=torch.long)
        old_s = c.serial if lp else torch.zeros(0, dtype=torch.long)
        c.owner, c.serial = torch.cat([old_o, owners]), torch.cat([old_s, serial])
