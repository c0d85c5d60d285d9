"""Data-construction settings: sizes and ratios of the three subsets, world settings, components.

``BUILD_PRESETS["paper"]`` has the paper's subset sizes (32,012 multi-turn; 15,201 conflict with 6,905
positive; 15,000 alignment with 5,000 positive); ``default`` is small enough for a CPU minute.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ..world.prompts import TAGS

FORMAT_VERSION = 1
# What the procedural builder writes for the same knobs; bump when that changes (caches and
# resumable builds keyed on it rebuild). 2: a flawed draft is context (loss false), never an MSE target.
# 3: multi-turn holds fact-corpus records and knowledge-prompt trajectories (fact_share, knowledge_share).
BUILDER_REVISION = 3
SUBSETS = ("multiturn", "conflict", "alignment")
SELF_KEYS = ("self_rounds", "self_temperature", "self_attempts", "self_batch")


@dataclass(frozen=True)
class BuildConfig:
    seed: int = 0
    image_size: int = 32                     # px; the renderer's grid is 3x3 cells
    multiturn: int = 600                     # samples per subset
    conflict: int = 300
    alignment: int = 300
    conflict_positive: float = 6905 / 15201  # share of consistent plans among conflict samples
    alignment_positive: float = 1 / 3        # share of aligned images among alignment samples
    max_images: int = 5                      # per multi-turn trajectory (paper: max 5)
    edit_share: float = 0.35                 # share of trajectories with a rewritten edit step
    refine_share: float = 0.2                # per round: a flawed draft, critique, <refine>, fix
    heldout_fraction: float = 0.05           # prompts reserved for evaluation (never built)
    layout: str = "random"                   # where objects go: "random" cells or "canonical" (one
                                             # layout per prompt; procpaint.world.scene.realize)
    verify_images: float = 1.0               # share of rendered images re-checked by the detector
    shard_size: int = 1000                   # records per JSONL shard
    # Knowledge (procpaint.world.facts): a share of multi-turn records are text-only fact-corpus
    # records (kind "fact", CE only), a share are trajectories whose prompt names a *trained* fact
    # (their plans resolve it); held-out facts are never in an image prompt. Both are off when the
    # tag mix has none of colors / counting / position (the scenes knowledge prompts resolve to).
    fact_share: float = 0.1                  # share of multi-turn records that are fact-corpus text
    knowledge_share: float = 0.1             # share of multi-turn records with a knowledge prompt
    knowledge_heldout: float = 0.5           # share of each category's facts held out (split_facts)
    knowledge_split_seed: int = 0            # seed of that split (the benchmark's default is 0)
    # Composite and counting prompts give the long trajectories (paper: 3.51 images on average).
    tag_weights: dict = field(default_factory=lambda: {t: 3.0 if t == "composite" else 1.5 if t == "counting"
                                                       else 1.0 for t in TAGS})
    painter: str = "procpaint.world.render:Renderer"
    judge: str = "procpaint.world.judge:SymbolicJudge"
    conflict_source: str = "symbolic"        # "symbolic" (+ scene graph) or "self" (needs a checkpoint)
    # Self-sampled conflict data (conflict_source="self", procpaint.datasets.self_sample).
    self_rounds: int = 5                     # plans (rounds) per sampled trajectory (paper: max 5 images)
    self_temperature: float = 1.0            # plan sampling temperature (0: greedy, one plan per prompt)
    self_attempts: int = 8                   # prompts tried per sample to meet conflict_positive
    self_batch: int = 32                     # prompts per generate() call

    def __post_init__(self):
        for k in ("conflict_positive", "alignment_positive", "edit_share", "refine_share",
                  "heldout_fraction", "verify_images", "fact_share", "knowledge_share", "knowledge_heldout"):
            v = getattr(self, k)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"BuildConfig.{k} must be in [0, 1], got {v}")
        if self.fact_share + self.knowledge_share > 1.0:
            raise ValueError(f"BuildConfig.fact_share + knowledge_share must be <= 1, got "
                             f"{self.fact_share} + {self.knowledge_share}")
        for k in ("multiturn", "conflict", "alignment"):
            if getattr(self, k) < 0:
                raise ValueError(f"BuildConfig.{k} must be >= 0, got {getattr(self, k)}")
        if not 1 <= self.max_images <= 9:
            raise ValueError(f"BuildConfig.max_images must be in [1, 9], got {self.max_images}")
        from ..world.scene import LAYOUTS

        if self.layout not in LAYOUTS:
            raise ValueError(f"BuildConfig.layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.shard_size < 1:
            raise ValueError(f"BuildConfig.shard_size must be >= 1, got {self.shard_size}")
        unknown = set(self.tag_weights) - set(TAGS)
        if unknown or not any(v > 0 for v in self.tag_weights.values()):
            raise ValueError(f"BuildConfig.tag_weights: unknown tags {sorted(unknown)} or no positive weight; "
                             f"known tags {TAGS}")
        if not 1 <= self.self_rounds <= 9 or self.self_attempts < 1 or self.self_batch < 1:
            raise ValueError(f"BuildConfig.self_rounds must be in [1, 9], self_attempts and self_batch >= 1; "
                             f"got {self.self_rounds}, {self.self_attempts}, {self.self_batch}")
        if self.self_temperature < 0:
            raise ValueError(f"BuildConfig.self_temperature must be >= 0, got {self.self_temperature}")
        if self.conflict_source not in ("symbolic", "self"):
            raise ValueError(f"BuildConfig.conflict_source must be 'symbolic' or 'self', "
                             f"got {self.conflict_source!r}")

    def size(self, subset: str) -> int:
        return getattr(self, subset)

    def to_dict(self) -> dict:
        return asdict(self)


BUILD_PRESETS = {
    "default": BuildConfig(),
    "tiny": BuildConfig(multiturn=24, conflict=12, alignment=12, shard_size=10),
    # The detector re-check costs ~2 ms per image (the rest of a sample ~2 ms); 10% keeps it cheap.
    "paper": BuildConfig(multiturn=32012, conflict=15201, alignment=15000, conflict_positive=6905 / 15201,
                        alignment_positive=5000 / 15000, verify_images=0.1, shard_size=2000),
}


def preset(name: str, **overrides) -> BuildConfig:
    if name not in BUILD_PRESETS:
        raise KeyError(f"unknown data preset {name!r}; known: {sorted(BUILD_PRESETS)}")
    return replace(BUILD_PRESETS[name], **overrides)
