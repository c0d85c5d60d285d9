"""The Plan -> Sketch -> Inspect -> Refine loop over a batch of prompts (procpaint's ``generate``).

Each prompt is a trajectory that, call after call, is in one phase:

    text    feed the last sampled token (the prompt at first), sample the next one under the grammar
    image   one Euler step of its noised split against the cache (+ CFG branches); after the last
            step the image is done
    commit  write the clean image once (full split, the noised copy's RoPE id) and, when the model has
            the ViT path (``model.vit``), its ViT split (the decoded image through the ViT, the next
            RoPE id), as training packs them — the same call's last ``<|vision_end|>`` output predicts
            what follows: critique (which so reads the draft through the ViT, as BAGEL's Inspect
            does), next plan, or EOS

All active trajectories, whatever their phase, share one packed model call per tick (engine.py), so a
batch mixes trajectories of different lengths; each has its own ``torch.Generator`` seeded with
``config.seed`` and the prompt text (:func:`trajectory_seed`: tokens and noise do not depend on the
batch it ran in, and different prompts start from different noise, so their errors are
independent). Text CFG reads the main
cache up to the last image; image CFG has its own cache rows, forked from the main one when the first
image is written (before that the two contexts are equal and the conditional velocity is reused).
"""

from __future__ import annotations

import time
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from procpaint.inference import decoding as G
from procpaint.inference.engine import Engine, ImageSpan, Query, TextSpan, VitSpan
from procpaint.inference.sampler import cfg_active, combine_cfg, euler_step, schedule, stochastic_step
from procpaint.inference.types import GenerationConfig, Stage, TrajectoryResult
from procpaint.model import ProcPaintModel
from procpaint.sequence.tokenizer import TextTokenizer

LogitsProcessor = Callable[[int, list[int], torch.Tensor], torch.Tensor]
# An inspector other than the model: (prompt, the trajectory's latest plan text, its draft (3, H, W) in
# [-1, 1]) -> the critique text the trajectory continues with (its tokens are fed, not sampled).
Critic = Callable[[str, str, torch.Tensor], str]


@dataclass
class _Traj:
    idx: int
    result: TrajectoryResult
    gen: torch.Generator
    pending: list[int]                          # text tokens the next call feeds
    segments: list = field(default_factory=list)  # committed main context (TextSpan / clean ImageSpan)
    pos: int = 0                                # next RoPE id
    n_tokens: int = 0                           # committed tokens (= main cache serial)
    cut: tuple[int, int, int] = (0, 0, 0)       # (segments, tokens, pos) at the last image: text CFG
    phase: str = "text"
    state: int = G.PLAN_OPEN
    history: list[int] = field(default_factory=list)
    stage: Stage | None = None
    stage_ids: list[int] = field(default_factory=list)
    images: int = 0
    img_branch: bool = False                    # an image was written: image CFG has its own context
    x: torch.Tensor | None = None               # (h*w, D_lat) latents being sampled
    step: int = 0
    forced: list[int] = field(default_factory=list)  # tokens to feed instead of sampling (a critic's)
    clean: list = field(default_factory=list)   # the splits a commit writes (clean copy [+ ViT split])
    pend_s: float = 0.0                         # cost not yet attributed to a stage (prefill)
    pend_n: int = 0

    @property
    def main(self) -> int:
        return 2 * self.idx

    @property
    def img(self) -> int:
        return 2 * self.idx + 1


class Painter:
    """A loaded model + tokenizer that turns prompts into :class:`TrajectoryResult` s."""

    def __init__(self, model: ProcPaintModel, tokenizer: TextTokenizer, *, image_size: int, source: str = "",
                 sampling: dict | None = None):
        self.model, self.tok, self.source = model.eval(), tokenizer, source
        self.image_size = int(image_size)
        # The training config's ``sampling`` group (CFG scales, steps, shift): what sample.py and
        # evaluate.py use unless their flags say otherwise (procpaint.inference.options).
        self.sampling = dict(sampling or {})
        self.last_profile: dict[str, float] = {}     # seconds per part of the last generate call
        self.grammars = {c: G.TagGrammar(tokenizer, constrained=c) for c in (True, False)}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of a prompt; UnknownWordsError names words outside the vocabulary."""
        ids = self.tok.encode(prompt)
        if not ids:
            raise ValueError(f"prompt {prompt!r} has no tokens")
        return ids

    def grid(self, image_size: int | None) -> tuple[int, int]:
        size = int(image_size or self.image_size)
        ppt = self.model.cfg.pixels_per_token
        if size % ppt or size // ppt > self.model.cfg.max_latent_size:
            raise ValueError(f"image_size {size} must be a multiple of {ppt} pixels per latent token with "
                             f"at most model.max_latent_size={self.model.cfg.max_latent_size} per side")
        return size // ppt, size // ppt

    @torch.inference_mode()
    def generate(self, prompts: list[str], config: GenerationConfig | None = None, *,
                 logits_processor: LogitsProcessor | None = None,
                 critic: Critic | None = None) -> list[TrajectoryResult]:
        """One trajectory per prompt, all advanced together (see the module docstring).

        ``logits_processor(index, generated_ids, logits (V,)) -> logits`` runs before the grammar
        mask (tests script trajectories with it).
        """
        cfg = config or GenerationConfig()
        cfg.validate()
        if isinstance(prompts, str):
            prompts = [prompts]
        ids = [self.encode_prompt(p) for p in prompts]
        run = _Run(self, cfg, self.grid(cfg.image_size), logits_processor, critic)
        out = run.go(prompts, ids)
        # Where the last call's time went (benchmarks/bench_generate.py prints it).
        self.last_profile = {**{f"model call: {k}": v for k, v in run.engine.timings.items()}, **run.profile,
                             "cache bytes at peak": float(run.peak_cache_bytes)}
        return out


def trajectory_seed(seed: int, prompt: str) -> int:
    """The seed of one trajectory's generator: ``seed`` mixed with a stable hash of the prompt."""
    return (int(seed) * 1_000_003 + zlib.crc32(prompt.encode())) % (1 << 63)


class _Run:
    """State of one ``generate`` call."""

    def __init__(self, g: Painter, cfg: GenerationConfig, grid: tuple[int, int], proc, critic=None):
        self.g, self.cfg, self.grid, self.proc, self.critic = g, cfg, grid, proc, critic
        self.cached = cfg.use_cache
        self.gram = g.grammars[cfg.constrained]
        self.engine = Engine(g.model, g.tok.vision_start_id, g.tok.vision_end_id)
        self.ts, self.dts = schedule(cfg.num_steps, cfg.timestep_shift)
        self.hw = grid[0] * grid[1]
        self.profile: dict[str, float] = defaultdict(float)
        self.peak_cache_bytes = 0

    # seconds outside the model call, per handler
    _TOKEN = "next token (head, grammar, sampling)"
    _HANDLER = {"text": _TOKEN, "prefill": _TOKEN, "commit": _TOKEN,
                "image": "flow update (velocity head, CFG, Euler, decode)"}

    def go(self, prompts: list[str], ids: list[list[int]]) -> list[TrajectoryResult]:
        trajs = []
        for i, (p, t) in enumerate(zip(prompts, ids)):
            gen = torch.Generator().manual_seed(trajectory_seed(self.cfg.seed, p))
            tr = _Traj(i, TrajectoryResult(p, self.cfg.mode, seed=self.cfg.seed), gen, list(t))
            if self.cfg.mode == "single-pass":
                if self.cached:
                    tr.phase = "prefill"                 # fill the cache; its logits are unused
                else:
                    self._commit_text(tr)
                    self._start_image(tr, "image")
            trajs.append(tr)
        while active := [t for t in trajs if t.phase != "done"]:
            self._tick(active)
        return [t.result for t in trajs]

    # ----------------------------------------------------------------------------- queries
    def _query(self, tr: _Traj, branch: str, new: list, write: bool = False) -> Query:
        if self.cached:
            owner = tr.img if branch == "img" else tr.main
            limit = tr.cut[1] if branch == "text" else 1 << 62
            return Query(new, owner=owner, limit=limit, write=write)
        if branch == "main":
            ctx = tr.segments
        elif branch == "text":
            ctx = tr.segments[: tr.cut[0]]
        else:                                           # images removed; their RoPE ids stay skipped
            ctx = [s for s in tr.segments if isinstance(s, TextSpan)]
        return Query([*ctx, *new])

    def _tick(self, active: list[_Traj]) -> None:
        queries, spans = [], []
        for tr in active:
            start = len(queries)
            if tr.phase in ("text", "prefill"):
                new = TextSpan(list(tr.pending), tr.pos)
                queries.append(self._query(tr, "main", [new], write=True))
                if self.cached and tr.img_branch and self.cfg.cfg_image_scale != 1.0:
                    queries.append(self._query(tr, "img", [new], write=True))
            elif tr.phase == "image":
                t = float(self.ts[tr.step])
                queries.append(self._query(tr, "main", [self._noised(tr, tr.pos)]))
                if cfg_active(t, self.cfg.cfg_text_scale, self.cfg.cfg_interval):
                    queries.append(self._query(tr, "text", [self._noised(tr, tr.cut[2])]))
                if tr.img_branch and cfg_active(t, self.cfg.cfg_image_scale, self.cfg.cfg_interval):
                    queries.append(self._query(tr, "img", [self._noised(tr, tr.pos)]))
            else:                                       # commit the clean image
                if self.cached and tr.images == 0 and self.cfg.cfg_image_scale != 1.0:
                    self.engine.cache.fork(tr.main, tr.img)
                tr.clean = [ImageSpan(tr.x, 0.0, tr.pos, self.grid, noise=False)]
                if self.g.model.cfg.vit:                # the decoded image, read by the understanding path
                    tr.clean.append(VitSpan.of_image(tr.stage.image.to(self.g.device), tr.pos + 1,
                                                     self.g.model.cfg))
                queries.append(self._query(tr, "main", list(tr.clean), write=True))
            spans.append((start, len(queries)))
        t0 = time.perf_counter()
        outs = self.engine.run(queries)
        dt = time.perf_counter() - t0
        phases = {"image" if t.phase == "image" else "text" for t in active}
        kind = {frozenset({"image"}): "flow-step calls", frozenset({"text"}): "text calls"}.get(
            frozenset(phases), "mixed calls")
        self.profile[kind] += dt
        self.profile[f"{kind} (count)"] += 1
        for tr, (a, b) in zip(active, spans):
            tr.result.model_tokens += sum(q.num_tokens for q in queries[a:b])
            tr.result.forward_passes += 1
            tr.result.seconds += dt
            if tr.stage is not None:
                tr.stage.seconds += dt
                tr.stage.forward_passes += 1
            else:
                tr.pend_s, tr.pend_n = tr.pend_s + dt, tr.pend_n + 1
            t1, phase = time.perf_counter(), tr.phase
            getattr(self, f"_after_{phase}")(tr, queries[a:b], outs[a:b])
            self.profile[self._HANDLER[phase]] += time.perf_counter() - t1
        if self.cached:
            self.peak_cache_bytes = max(self.peak_cache_bytes, self.engine.cache.nbytes())
            done = [o for t in active if t.phase == "done" for o in (t.main, t.img)]
            self.engine.cache.drop(done)

    def _noised(self, tr: _Traj, pos: int) -> ImageSpan:
        return ImageSpan(tr.x, float(self.ts[tr.step]), pos, self.grid, noise=True)

    # ---------------------------------------------------------------------------- handlers
    def _commit_text(self, tr: _Traj) -> None:
        n = len(tr.pending)
        last = tr.segments[-1] if tr.segments else None
        if isinstance(last, TextSpan):
            last.ids.extend(tr.pending)               # one causal run: same mask, same positions
        else:
            tr.segments.append(TextSpan(list(tr.pending), tr.pos))
        tr.pos += n
        tr.n_tokens += n
        tr.pending = []

    def _after_prefill(self, tr: _Traj, queries, outs) -> None:
        self._commit_text(tr)
        self._start_image(tr, "image")

    def _after_text(self, tr: _Traj, queries, outs) -> None:
        self._commit_text(tr)
        self._next_token(tr, outs[0][-1])

    def _after_image(self, tr: _Traj, queries, outs) -> None:
        hw = self.hw
        t = float(self.ts[tr.step])
        vel = [self.g.model.predict_velocity(o[-hw - 1:-1], tr.x, t).float() for o in outs]  # (hw, D_lat)
        c = self.cfg
        v_text = v_img = None
        k = 1
        if cfg_active(t, c.cfg_text_scale, c.cfg_interval):
            v_text, k = vel[k], k + 1
        if cfg_active(t, c.cfg_image_scale, c.cfg_interval):
            # Before the first image the image-free context is the context itself.
            v_img = vel[k] if tr.img_branch else vel[0]
        v = combine_cfg(vel[0], v_text, v_img, text_scale=c.cfg_text_scale, image_scale=c.cfg_image_scale,
                        renorm=c.cfg_renorm, renorm_min=c.cfg_renorm_min)
        if c.sde_noise > 0 and tr.step + 1 < len(self.ts):      # the last step lands on x0 either way
            fresh = torch.randn(tr.x.shape, generator=tr.gen).to(tr.x.device, tr.x.dtype)
            tr.x = stochastic_step(tr.x, v.to(tr.x.dtype), t, float(self.ts[tr.step + 1]), c.sde_noise, fresh)
        else:
            tr.x = euler_step(tr.x, v.to(tr.x.dtype), float(self.dts[tr.step]))
        tr.step += 1
        if tr.step < len(self.ts):
            return
        h, w = self.grid
        tr.stage.image = self.g.model.codec.decode(tr.x[None].float(), h, w)[0].clamp(-1, 1).float().cpu()
        if self.cfg.mode == "single-pass":
            self._close_stage(tr)
            self._finish(tr, "eos")
        else:
            tr.phase = "commit"

    def _after_commit(self, tr: _Traj, queries, outs) -> None:
        tr.segments += tr.clean
        tr.n_tokens += sum(s.num_tokens for s in tr.clean)
        tr.pos += len(tr.clean)                       # one RoPE id per split
        tr.clean = []
        tr.images += 1
        tr.img_branch = True          # the image-free context now differs (cached: forked rows)
        tr.cut = (len(tr.segments), tr.n_tokens, tr.pos)
        kind = tr.stage.kind
        self._close_stage(tr)
        after_draft = kind == "draft" and self.cfg.mode == "process"
        tr.state = G.CRITIQUE if after_draft else G.BETWEEN
        if after_draft and self.critic is not None:
            plan = next((s.text for s in reversed(tr.result.stages) if s.kind == "plan" and s.text), "")
            draft = next(s.image for s in reversed(tr.result.stages) if s.image is not None)
            tr.forced = self.g.encode_prompt(self.critic(tr.result.prompt, plan, draft))
        self._next_token(tr, outs[0][-1])

    # ------------------------------------------------------------------------------ tokens
    def _next_token(self, tr: _Traj, hidden: torch.Tensor) -> None:
        if tr.forced:                                    # a critic's text: fed, not sampled
            tok = tr.forced.pop(0)
        else:
            logits = self.g.model.lm_head(hidden[None])[0]                           # (V,)
            if self.proc is not None:
                logits = self.proc(tr.idx, list(tr.history), logits)
            allowed = self.gram.allowed(tr.state, planner=self.cfg.mode == "planner")
            tok = G.sample_token(logits, allowed, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                 generator=tr.gen)
        gr, c = self.gram, self.cfg
        if tok == gr.eos:
            return self._finish(tr, "eos" if tr.images else "no_image")
        wants_round = tok == gr.vs or (tok in (gr.ins, gr.refine) and tr.images > 0)
        if wants_round and tr.images >= c.max_rounds:
            return self._finish(tr, "max_rounds")
        if tok == gr.vs:
            kind = "refined" if tr.stage is not None and tr.stage.kind == "refine" else "draft"
            self._close_stage(tr)
            return self._start_image(tr, kind)
        if tok in (gr.ins, gr.refine) or tr.stage is None:
            new = {gr.ins: "plan", gr.refine: "refine"}.get(tok, "critique" if tr.images else "plan")
            self._close_stage(tr)
            self._open_stage(tr, new)
        if len(tr.stage_ids) >= c.max_text_tokens:
            return self._finish(tr, "max_text_tokens")
        tr.stage_ids.append(tok)
        tr.history.append(tok)
        tr.state = gr.advance(tr.state, tok)
        tr.pending, tr.phase = [tok], "text"

    def _start_image(self, tr: _Traj, kind: str) -> None:
        self._open_stage(tr, kind)
        tr.stage.tokens = self.hw
        dim = self.g.model.cfg.latent_dim
        tr.x = torch.randn((self.hw, dim), generator=tr.gen).to(self.g.device)       # t = 1: noise
        tr.step, tr.phase = 0, "image"

    # ------------------------------------------------------------------------------ stages
    def _open_stage(self, tr: _Traj, kind: str) -> None:
        tr.stage = Stage(kind, seconds=tr.pend_s, forward_passes=tr.pend_n)
        tr.pend_s, tr.pend_n = 0.0, 0
        tr.stage_ids = []
        tr.result.stages.append(tr.stage)

    def _close_stage(self, tr: _Traj) -> None:
        st = tr.stage
        if st is not None and st.image is None and st.kind not in ("draft", "refined", "image"):
            st.text = self.g.tok.decode(tr.stage_ids)
            st.tokens = len(tr.stage_ids)
        tr.stage = None

    def _finish(self, tr: _Traj, reason: str) -> None:
        self._close_stage(tr)
        # An image stage cut short has no image: drop it rather than report an empty picture.
        tr.result.stages = [s for s in tr.result.stages
                            if s.kind not in ("draft", "refined", "image") or s.image is not None]
        tr.result.end_reason = reason
        tr.phase = "done"
