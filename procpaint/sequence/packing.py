"""Streaming best-fit-decreasing packing of samples into token budgets -> :class:`PackedBatch`.

Samples arrive one at a time (an endless, sharded stream); each is planned at once (CFG dropout
decided then, so its length is exact) and held in an overflow buffer. Whenever the buffer holds more
than ``overflow_buffer`` samples and at least a budget's worth of tokens, the buffer is packed
best-fit-decreasing into bins of ``max_tokens`` and the fullest bin is emitted (or, when a sample has
waited ``max_wait_packs`` packs, the bin holding the oldest one: nothing starves); the rest stays
buffered for the next pack. ``flush`` empties the buffer at the end of a finite stream.

Samples longer than ``max_tokens_per_sample`` (default: the budget) or with no tokens at all are
skipped and counted: one :class:`SkippedSamplesWarning` at the first skip, a summary at ``flush`` and
running counts in every batch's ``stats`` — never a crash, never a silent drop. Padding up to the
budget is a final causal sample of pad ids with no loss (fixed shapes for compiled models).

Images of a pack are stacked once per distinct image into (I, 3, Hmax, Wmax), zero-padded at the
bottom/right when sizes differ (BAGEL pads the same way); ``latent_patch_ids`` are row-major in that
padded grid (row * Wmax/ppt + col), which is exactly "row-major inside its image" when all images share
a size, and lets the model patchify the stacked tensor once and gather.

With the ViT path (``vit``) the packer also patchifies each clean image for its ViT split, as BAGEL's
``PackedDataset`` does (``procpaint.model.vit.vit_inputs``: resized to the ViT grid when it does not
tile): ``PackedBatch.vit_patches`` / ``vit_position_ids`` / ``vit_seqlens`` / ``vit_indexes``. Without
it packs are bit for bit what they were.

Memory: the buffer holds ``overflow_buffer`` + one budget of samples with their images.
"""

from __future__ import annotations

import bisect
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from procpaint.kernels.flow import sample_timesteps
from procpaint.model.vit import vit_inputs
from procpaint.sequence.plan import CAUSAL, SequencePlan, SequencePlanner, ViTSplits
from procpaint.sequence.tokenizer import TextTokenizer
from procpaint.sequence.types import PackedBatch, Sample


class NothingToPackError(ValueError):
    """A whole pass over the data gave the packer no sample it can use (all too long or empty):
    an endless stream would otherwise spin forever without yielding a pack."""


class SkippedSamplesWarning(UserWarning):
    """Samples were skipped by the packer (too long for the budget, or empty)."""


@dataclass
class _Entry:
    plan: SequencePlan
    sample: Sample
    arrival: int          # index of the sample in the stream (0-based, skipped ones included)
    enqueued: int         # packs emitted before it arrived (for max_wait_packs)


def collate_packed(batch):
    """DataLoader collate for packed streams: a PackedBatch (or a 1-list of one) passes unchanged."""
    if isinstance(batch, PackedBatch):
        return batch
    if isinstance(batch, (list, tuple)) and len(batch) == 1 and isinstance(batch[0], PackedBatch):
        return batch[0]
    raise TypeError("collate_packed expects one PackedBatch per step (use DataLoader(batch_size=None)), "
                    f"got {type(batch).__name__}")


class Packer:
    """Streaming best-fit-decreasing packer (see module docstring).

    Args:
        tokenizer: text tokenizer (pad / vision / EOS ids come from it).
        pixels_per_token: image pixels per latent token side (ModelConfig.pixels_per_token).
        max_tokens: token budget L of every pack.
        max_tokens_per_sample: longer samples are skipped and counted (default and maximum: max_tokens).
        overflow_buffer: samples held back between packs for a better fit (memory: these + one budget).
        p_drop_text / p_drop_image: CFG dropout, per sample: the conditioning text of its first
            generated image (roles in ``cfg_text_roles``; see plan.py) / all context images
            (ImageSegment loss=False) are removed together.
        timestep_shift, timestep_logit_std, timestep_mix_frac, timestep_mix_shift: the shifted
            logit-normal timestep distribution, optionally a two-shift mixture
            (procpaint.kernels.flow.sample_timesteps, the one home of the flow convention).
        max_wait_packs: a sample buffered this many packs goes into the next pack (filled around it);
            default 2 * overflow_buffer + 8, beyond the buffer's normal turnover.
        pad_to_budget: add the padding sample so every pack has exactly max_tokens tokens.
        vit: the ViT path's geometry (``ViTSplits.from_model_config``): every clean image also gets a
            ViT split (plan.py); None: none.
        seed: seeds two generators, one for dropout (one draw pair per arrival, so a sample's
            decisions do not depend on the buffer or budget) and one for timesteps (per pack); the
            output is a function of (seed, sample stream, arguments).
    """

    def __init__(self, tokenizer: TextTokenizer, *, pixels_per_token: int, max_tokens: int = 33000,
                 max_tokens_per_sample: int | None = None, overflow_buffer: int = 64,
                 p_drop_text: float = 0.0, p_drop_image: float = 0.0, timestep_shift: float = 1.0,
                 timestep_logit_std: float = 1.0, timestep_mix_frac: float = 0.0,
                 timestep_mix_shift: float = 1.0, max_wait_packs: int | None = None,
                 pad_to_budget: bool = True, max_latent_size: int | None = None, cfg_text_roles: tuple[str, ...] = ("prompt", "plan"),
                 seed: int = 0, vit: ViTSplits | None = None):
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        limit = max_tokens if max_tokens_per_sample is None else max_tokens_per_sample
        if not 1 <= limit <= max_tokens:
            raise ValueError(f"max_tokens_per_sample must be in [1, max_tokens={max_tokens}], got {limit}")
        if max_wait_packs is None:  # well beyond a buffer's turnover: forcing stays rare
            max_wait_packs = 2 * overflow_buffer + 8
        if overflow_buffer < 0 or max_wait_packs < 1:
            raise ValueError(f"overflow_buffer must be >= 0 and max_wait_packs >= 1, got "
                             f"{overflow_buffer} and {max_wait_packs}")
        for name, p in (("p_drop_text", p_drop_text), ("p_drop_image", p_drop_image)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        for name, v in (("timestep_shift", timestep_shift), ("timestep_logit_std", timestep_logit_std),
                        ("timestep_mix_shift", timestep_mix_shift)):
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a positive number, got {v}")
        if not 0.0 <= timestep_mix_frac <= 1.0:
            raise ValueError(f"timestep_mix_frac must be in [0, 1], got {timestep_mix_frac}")
        self.planner = SequencePlanner(tokenizer, pixels_per_token, max_latent_size=max_latent_size,
                                       cfg_text_roles=cfg_text_roles, vit=vit)
        self.pad_id = tokenizer.pad_id
        self.max_tokens, self.limit, self.overflow_buffer = int(max_tokens), int(limit), int(overflow_buffer)
        self.p_text, self.p_image, self.shift = float(p_drop_text), float(p_drop_image), float(timestep_shift)
        self.logit_std = float(timestep_logit_std)
        self.mix_frac, self.mix_shift = float(timestep_mix_frac), float(timestep_mix_shift)
        self.max_wait, self.pad, self.seed = int(max_wait_packs), bool(pad_to_budget), int(seed)
        self.drop_gen = torch.Generator().manual_seed(self.seed)
        self.time_gen = torch.Generator().manual_seed(self.seed ^ 0x5EED_7157)
        self.buffer: list[_Entry] = []
        self.buffered_tokens = 0
        self.counters = dict(samples_seen=0, packs=0, skipped_too_long=0, skipped_empty=0, dropped_text=0,
                             dropped_image=0, text_droppable=0, image_droppable=0, packed_samples=0)
        self._warned = False

    # ---------------------------------------------------------------- streaming
    def add(self, sample: Sample) -> list[PackedBatch]:
        """Take one sample; return the packs (usually none or one) that became ready."""
        c = self.counters
        arrival = c["samples_seen"]
        c["samples_seen"] += 1
        u = torch.rand(2, generator=self.drop_gen).tolist()  # always two draws: stream stays aligned
        has_text, has_image = self.planner.has_droppable(sample)
        drop_text, drop_image = has_text and u[0] < self.p_text, has_image and u[1] < self.p_image
        plan = self.planner.plan(sample, drop_text=drop_text, drop_image=drop_image)
        n = plan.num_tokens
        if n == 0 or n > self.limit:
            key = "skipped_empty" if n == 0 else "skipped_too_long"
            c[key] += 1
            if not self._warned:
                self._warned = True
                why = "has no tokens" if n == 0 else f"has {n} tokens > max_tokens_per_sample={self.limit}"
                warnings.warn(f"packer: skipping sample {sample.id or f'#{arrival}'} ({why}); further skips "
                              "are counted in PackedBatch.stats['skipped_total'] and summarised at the end "
                              "of the stream", SkippedSamplesWarning, stacklevel=2)
            return []
        c["text_droppable"] += has_text
        c["image_droppable"] += has_image
        c["dropped_text"] += drop_text
        c["dropped_image"] += drop_image
        self.buffer.append(_Entry(plan, sample, arrival, c["packs"]))
        self.buffered_tokens += n
        out = []
        while len(self.buffer) > self.overflow_buffer and self.buffered_tokens >= self.max_tokens:
            out.append(self._emit())
        return out

    def flush(self) -> list[PackedBatch]:
        """Pack everything still buffered (end of a finite stream) and warn once about skips."""
        out = []
        while self.buffer:
            out.append(self._emit())
        skipped = self.counters["skipped_too_long"] + self.counters["skipped_empty"]
        if skipped:
            warnings.warn(f"packer: skipped {skipped} of {self.counters['samples_seen']} samples "
                          f"({self.counters['skipped_too_long']} longer than max_tokens_per_sample="
                          f"{self.limit}, {self.counters['skipped_empty']} empty)",
                          SkippedSamplesWarning, stacklevel=2)
        return out

    @property
    def accepted(self) -> int:
        """Samples taken so far (seen minus skipped)."""
        c = self.counters
        return c["samples_seen"] - c["skipped_too_long"] - c["skipped_empty"]

    def nothing_to_pack(self, where: str) -> NothingToPackError:
        """The error for a pass over ``where`` that gave no usable sample."""
        c = self.counters
        return NothingToPackError(
            f"{where}: nothing to pack: {c['samples_seen']} sample(s) seen, {c['skipped_too_long']} longer "
            f"than max_tokens_per_sample={self.limit}, {c['skipped_empty']} empty; raise data.max_tokens / "
            f"data.max_tokens_per_sample or check the data")

    def pack_stream(self, samples: Iterable[Sample]) -> Iterator[PackedBatch]:
        """Packs of ``samples`` in order; the buffer is flushed when the iterable ends."""
        for sample in samples:
            yield from self.add(sample)
        yield from self.flush()

    # ---------------------------------------------------------------- resume
    def _signature(self) -> dict:
        sig = dict(max_tokens=self.max_tokens, limit=self.limit, overflow_buffer=self.overflow_buffer,
                   p_text=self.p_text, p_image=self.p_image, shift=self.shift, max_wait=self.max_wait,
                   pad=self.pad, seed=self.seed, ppt=self.planner.ppt)
        if self.mix_frac:  # only then: states saved before the mixture existed still match
            sig.update(mix_frac=self.mix_frac, mix_shift=self.mix_shift)
        if self.planner.vit is not None:  # likewise
            sig.update(vit=(self.planner.vit.patch_size, self.planner.vit.max_per_side))
        return sig

    def state_dict(self, *, include_samples: bool = False) -> dict:
        """Everything needed to continue the stream exactly: generator state, counters and the
        buffered samples (by ``Sample.id`` with their dropout decisions; the samples themselves with
        ``include_samples=True``). The upstream iterator's position is the caller's to restore."""
        if not include_samples and any(not e.sample.id for e in self.buffer):
            raise ValueError("packer.state_dict: buffered samples without Sample.id cannot be restored "
                             "by id; give samples ids or use include_samples=True")
        state = dict(version=1, signature=self._signature(),
                     rng=[self.drop_gen.get_state(), self.time_gen.get_state()],
                     counters=dict(self.counters), warned=self._warned,
                     buffer=[dict(id=e.sample.id, arrival=e.arrival, enqueued=e.enqueued,
                                  drop_text=e.plan.dropped_text, drop_image=e.plan.dropped_image)
                             for e in self.buffer])
        if include_samples:
            state["samples"] = [e.sample for e in self.buffer]
        return state

    def load_state_dict(self, state: dict,
                        samples: Mapping[str, Sample] | Callable[[str], Sample] | None = None) -> None:
        """Restore :meth:`state_dict`; ``samples`` resolves buffered ids (unless the state holds them)."""
        if state.get("version") != 1:
            raise ValueError(f"packer state: unsupported version {state.get('version')!r}")
        mine, saved = self._signature(), state["signature"]
        diff = {k: (mine.get(k), saved.get(k)) for k in mine.keys() | saved.keys() if mine.get(k) != saved.get(k)}
        if diff:
            raise ValueError(f"packer state was saved with other settings (now, saved): {diff}")
        stored = state.get("samples")
        if stored is None and samples is None and state["buffer"]:
            raise ValueError("packer state holds sample ids only: pass `samples` (a mapping or a "
                             "function id -> Sample) to restore the buffer")
        lookup = samples.__getitem__ if isinstance(samples, Mapping) else samples
        self.buffer, self.buffered_tokens = [], 0
        for k, rec in enumerate(state["buffer"]):
            sample = stored[k] if stored is not None else lookup(rec["id"])
            plan = self.planner.plan(sample, drop_text=rec["drop_text"], drop_image=rec["drop_image"])
            self.buffer.append(_Entry(plan, sample, rec["arrival"], rec["enqueued"]))
            self.buffered_tokens += plan.num_tokens
        self.drop_gen.set_state(state["rng"][0])
        self.time_gen.set_state(state["rng"][1])
        self.counters = dict(state["counters"])
        self._warned = bool(state["warned"])

    # ---------------------------------------------------------------- bin choice
    def _choose(self) -> list[int]:
        """Buffer indexes of the next pack: best-fit-decreasing over the buffer, fullest bin."""
        buf = self.buffer
        order = sorted(range(len(buf)), key=lambda i: (-buf[i].plan.num_tokens, buf[i].arrival))
        rems: list[int] = []      # remaining capacity of open bins, ascending
        rem_bin: list[int] = []   # bin id of each rems entry
        bins: list[list[int]] = []
        for i in order:
            n = buf[i].plan.num_tokens
            j = bisect.bisect_left(rems, n)  # tightest bin that still fits
            if j < len(rems):
                b, r = rem_bin.pop(j), rems.pop(j) - n
            else:
                b, r = len(bins), self.max_tokens - n
                bins.append([])
            bins[b].append(i)
            k = bisect.bisect_left(rems, r)
            rems.insert(k, r)
            rem_bin.insert(k, b)
        if self.counters["packs"] - buf[0].enqueued >= self.max_wait:  # buffer is in arrival order
            # The oldest sample goes now, in a bin filled around it (largest that fit first).
            chosen, rem = [0], self.max_tokens - buf[0].plan.num_tokens
            for i in order:
                if i and buf[i].plan.num_tokens <= rem:
                    chosen.append(i)
                    rem -= buf[i].plan.num_tokens
            return sorted(chosen)
        fills = [sum(buf[i].plan.num_tokens for i in b) for b in bins]
        return sorted(bins[fills.index(max(fills))])

    def _emit(self) -> PackedBatch:
        chosen = self._choose()
        keep = set(chosen)
        entries = [self.buffer[i] for i in chosen]
        self.buffer = [e for i, e in enumerate(self.buffer) if i not in keep]
        self.buffered_tokens -= sum(e.plan.num_tokens for e in entries)
        self.counters["packs"] += 1
        self.counters["packed_samples"] += len(entries)
        return self._build(entries)

    # ---------------------------------------------------------------- tensors
    def _build(self, entries: list[_Entry]) -> PackedBatch:
        """Concatenate the samples' layouts (offset by each sample's start) into one PackedBatch of
        L = max_tokens (or the real length without padding); timesteps drawn here, one per image."""
        plans = [e.plan for e in entries]
        lays = [p.layout() for p in plans]
        lens = [p.num_tokens for p in plans]
        real = sum(lens)
        L = self.max_tokens if self.pad else real
        pad_n = L - real
        offs = np.cumsum([0, *lens[:-1]]).tolist()
        imgs = [im for p in plans for im in p.images]
        img_base = np.cumsum([0, *[len(p.images) for p in plans[:-1]]]).tolist()
        noise_base = np.cumsum([0, *[lay.num_noise_splits for lay in lays[:-1]]]).tolist()
        ppt = self.planner.ppt
        if imgs:
            Hm, Wm = max(int(im.shape[1]) for im in imgs), max(int(im.shape[2]) for im in imgs)
            if all(im.shape[1:] == (Hm, Wm) for im in imgs):
                images = torch.stack(imgs).float()
            else:  # mixed sizes: zero-pad bottom/right to the largest
                images = torch.zeros(len(imgs), 3, Hm, Wm, dtype=torch.float32)
                for r, im in enumerate(imgs):
                    images[r, :, : im.shape[1], : im.shape[2]] = im
        else:
            Wm, images = ppt, torch.zeros(0, 3, 0, 0, dtype=torch.float32)

        def cat(get, shift=None, tail=None) -> torch.Tensor:
            parts = [get(lay) + (0 if shift is None else shift[i]) for i, lay in enumerate(lays)]
            if tail is not None:
                parts.append(tail)
            return torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros(0, dtype=torch.int64)

        pad_pos = np.arange(real, L, dtype=np.int64)
        text_indexes = cat(lambda la: la.text_offsets, offs, pad_pos)
        text_ids = cat(lambda la: la.text_ids, None, np.full(pad_n, self.pad_id, dtype=np.int64))
        position_ids = cat(lambda la: la.position_ids, None, np.arange(pad_n, dtype=np.int64))
        latent_indexes = cat(lambda la: la.latent_offsets, offs)
        # Global ordinal of each latent token's noise split (-1: clean copy): one timestep per image.
        noise_split = torch.from_numpy(np.concatenate(
            [np.where(la.latent_noise_split >= 0, la.latent_noise_split + nb, -1)
             for la, nb in zip(lays, noise_base)]))
        noised = noise_split >= 0
        t_gen = sample_timesteps(sum(la.num_noise_splits for la in lays), shift=self.shift,
                                 logit_std=self.logit_std, mix_frac=self.mix_frac, mix_shift=self.mix_shift,
                                 generator=self.time_gen)
        latent_timesteps = torch.zeros(len(noise_split), dtype=torch.float32)
        latent_timesteps[noised] = t_gen[noise_split[noised]]
        split_lens = [s for la in lays for s in la.split_lens] + ([pad_n] if pad_n else [])
        attn_modes = [m for la in lays for m in la.attn_modes] + ([CAUSAL] if pad_n else [])
        vit = self._vit_fields(plans, lays, offs)
        longest = max(lens)
        c = self.counters
        stats = dict(
            efficiency=real / self.max_tokens, pad_to_longest_efficiency=real / (longest * len(lens)),
            pad_to_longest_tokens=longest * len(lens), longest_sample=longest, num_samples=len(lens),
            num_real_tokens=real, skipped_total=c["skipped_too_long"] + c["skipped_empty"],
            buffered=len(self.buffer), sample_ids=[e.sample.id for e in entries],
            arrivals=[e.arrival for e in entries], **c,
        )
        return PackedBatch(
            seq_len=L, sample_lens=lens + ([pad_n] if pad_n else []), split_lens=split_lens,
            attn_modes=attn_modes, text_ids=text_ids, text_indexes=text_indexes, position_ids=position_ids,
            latent_indexes=latent_indexes, latent_image_ids=cat(lambda la: la.latent_image, img_base),
            latent_patch_ids=cat(lambda la: la.latent_rows * (Wm // ppt) + la.latent_cols),
            latent_timesteps=latent_timesteps, latent_noised=noised, images=images,
            ce_indexes=cat(lambda la: la.ce_offsets, offs), ce_labels=cat(lambda la: la.ce_labels),
            num_real_tokens=real, num_samples=len(lens), stats=stats, **vit,
        )

    def _vit_fields(self, plans: list[SequencePlan], lays, offs: list[int]) -> dict:
        """PackedBatch's ViT fields of the pack (none without the ViT path: the defaults stay)."""
        g = self.planner.vit
        if g is None:
            return {}
        patches, ids, seqlens = [], [], []
        for plan, lay in zip(plans, lays):
            for row, grid in zip(lay.vit_images, lay.vit_grids):
                x, pid, hw = vit_inputs(plan.images[row], g.patch_size, g.max_per_side)
                assert hw == grid, (hw, grid)               # the plan's length is the patches'
                patches.append(x)
                ids.append(pid)
                seqlens.append(hw[0] * hw[1])
        if not seqlens:
            return dict(vit_patches=torch.zeros(0, 3 * g.patch_size**2))
        index = np.concatenate([lay.vit_offsets + o for lay, o in zip(lays, offs)])
        return dict(vit_indexes=torch.from_numpy(index), vit_patches=torch.cat(patches),
                    vit_position_ids=torch.cat(ids), vit_seqlens=seqlens)


def pack_stream(samples: Iterable[Sample], tokenizer: TextTokenizer, **kwargs) -> Iterator[PackedBatch]:
    """``Packer(tokenizer, **kwargs).pack_stream(samples)``: an iterator of packs for an
    IterableDataset's ``__iter__`` (seed it per rank and worker) with :func:`collate_packed`."""
    return Packer(tokenizer, **kwargs).pack_stream(samples)
