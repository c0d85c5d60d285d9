"""Experiment configuration: structured OmegaConf schemas (dataclasses) for ``train/*.py``.

A YAML file is merged onto :class:`Config`, so an unknown or misspelled key, a wrong type or a
contradictory setting is a :class:`ConfigError` naming the key and the file. A YAML may start
with ``base: other.yaml`` (relative to itself) and then hold only its differences.

Top-level groups: seed, data, model, parallel, optim, loss, trainer (``lightning.Trainer``'s own argument
names), logging, sampling; plus ``ckpt_path`` to resume and ``finetune_from`` to start from another
run's weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from procpaint.model.config import PRESETS, ModelConfig, model_config


class ConfigError(ValueError):
    """A configuration problem, naming the key and (when known) the file."""


@dataclass
class DataConfig:
    root: str | None = None               # dataset directory; None: build procedural data in cache_dir
    cache_dir: str = "data_cache"         # where the default procedural dataset is built once
    subsets: list[str] = field(default_factory=lambda: ["multiturn", "conflict", "alignment"])
    build_samples: int = 2000             # samples per built dataset (split over subsets by ratio)
    image_size: int = 16                  # images are resized to this (pixels per side)
    tokenizer: str | None = None          # tokenizer.json; None: <root>/tokenizer.json
    unk: str = "error"                    # unknown words: "error" or "map" (to <unk>)
    on_error: str = "error"               # corrupt data: "error" (refused, naming file:line) or "skip"
    max_tokens: int = 2048                # token budget of one packed sequence
    max_tokens_per_sample: int | None = None  # longer samples are skipped and counted
    overflow_buffer: int = 64             # samples held back by the streaming best-fit packer
    p_drop_text: float = 0.1              # CFG: probability of dropping the text prompt
    p_drop_image: float = 0.1             # CFG: probability of dropping image context
    val_root: str | None = None           # validation dataset; None: built beside procedural data
    val_samples: int = 64                 # samples of the built validation set
    num_workers: int = 0
    # Ablation knobs of the paper's rows (train/configs/*.yaml; see train/reproduce.py). They select
    # how the procedural dataset is built (procpaint.datasets.DataConfig); None keeps its default.
    trajectory: str = "process"           # "process" | "final_only": prompt -> final image (single-pass)
    edit_share: float | None = None       # share of trajectories with an edit-op rewrite (0: no aug)
    refine_share: float | None = None     # per round: flawed draft + critique + <refine> + fix
    layout: str | None = None             # object placement: "random" | "canonical" (None: random)
    fact_share: float | None = None       # share of multi-turn records that are fact-corpus text and
    knowledge_share: float | None = None  # that are knowledge-prompt trajectories (None: the builder's)
    self_critique: bool = True            # False: no INSPECT critiques / refines in trajectories
    conflict_source: str = "symbolic"     # conflict critiques: "symbolic" (scene graph) | "self"
    conflict_ckpt: str | None = None      # multi-turn checkpoint that self-samples conflict plans

    def __post_init__(self):
        if self.layout not in (None, "random", "canonical"):
            raise ConfigError(f"data.layout must be 'random' or 'canonical' (or null), got {self.layout!r}")
        bad = sorted(set(self.subsets) - {"multiturn", "conflict", "alignment"})
        if bad or not self.subsets:
            raise ConfigError(f"data.subsets: unknown or empty {bad or self.subsets}; "
                              "choose from multiturn, conflict, alignment")
        if self.trajectory not in ("process", "final_only"):
            raise ConfigError(f"data.trajectory must be 'process' or 'final_only', got {self.trajectory!r}")
        critique_subsets = sorted(set(self.subsets) & {"conflict", "alignment"})
        if critique_subsets and (self.trajectory == "final_only" or not self.self_critique):
            raise ConfigError(f"data.subsets {critique_subsets} are critique targets; they contradict "
                              f"data.trajectory={self.trajectory!r} / "
                              f"data.self_critique={self.self_critique}")
        for key in ("edit_share", "refine_share", "fact_share", "knowledge_share"):
            v = getattr(self, key)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ConfigError(f"data.{key} must be in [0, 1] (or null for the default), got {v}")
        if self.fact_share is not None and self.knowledge_share is not None \
                and self.fact_share + self.knowledge_share > 1.0:
            raise ConfigError(f"data.fact_share + data.knowledge_share must be <= 1, got "
                              f"{self.fact_share} + {self.knowledge_share}")
        if self.conflict_source not in ("symbolic", "self"):
            raise ConfigError(f"data.conflict_source must be 'symbolic' or 'self', "
                              f"got {self.conflict_source!r}")
        if self.conflict_source == "self" and not self.conflict_ckpt:
            raise ConfigError("data.conflict_source='self' needs data.conflict_ckpt "
                              "(a multi-turn checkpoint)")
        for key in ("p_drop_text", "p_drop_image"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"data.{key} must be in [0, 1), got {getattr(self, key)}")
        if self.max_tokens_per_sample is not None and self.max_tokens_per_sample > self.max_tokens:
            raise ConfigError(f"data.max_tokens_per_sample ({self.max_tokens_per_sample}) exceeds "
                              f"data.max_tokens ({self.max_tokens})")
        if self.unk not in ("error", "map"):
            raise ConfigError(f"data.unk must be 'error' or 'map', got {self.unk!r}")
        if self.on_error not in ("error", "skip"):
            raise ConfigError(f"data.on_error must be 'error' or 'skip', got {self.on_error!r}")
        for key in ("max_tokens", "build_samples", "val_samples", "overflow_buffer", "num_workers"):
            low = 1 if key in ("max_tokens", "build_samples", "val_samples") else 0
            if getattr(self, key) < low:
                raise ConfigError(f"data.{key} must be >= {low}, got {getattr(self, key)}")


# The smallest object the world's detector is measured to tell apart (a small object on a 32 px canvas).
MIN_OBJECT_PX = 5

# ModelConfig fields measured from the data at build time, never set in a config file.
DATA_DERIVED = ("vocab_size", "latent_mean", "latent_std")


def _model_group():
    """The ``model`` group: a preset name plus optional overrides of any ModelConfig field
    (None = the preset's value). Generated from ModelConfig so the two never drift apart."""
    from dataclasses import make_dataclass

    optional = ("vae_path", "init_from")          # already `str | None`
    extra = [(f.name, f.type if f.name in optional else f"{f.type} | None", field(default=None))
             for f in fields(ModelConfig) if f.name not in DATA_DERIVED]
    return make_dataclass("ModelGroup", [("preset", str, field(default="small")), *extra])


ModelGroup = _model_group()


@dataclass
class ParallelConfig:
    """How the model is executed (separate from what it is): torchtitan-style apply_* steps run in
    the LightningModule's configure_model."""

    activation_checkpointing: int = 0     # checkpoint every k-th decoder layer (0: off)
    compile: bool = False                 # torch.compile each decoder layer


@dataclass
class OptimConfig:
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])   # BAGEL
    eps: float = 1e-15                                                # BAGEL
    weight_decay: float = 0.0
    warmup_steps: int = 50
    schedule: str = "cosine"              # "cosine" | "constant" (after warmup)
    min_lr_ratio: float = 0.1             # cosine floor as a fraction of lr
    ema_decay: float = 0.999              # 0 disables the EMA callback

    def __post_init__(self):
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"optim.schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if len(self.betas) != 2:
            raise ConfigError(f"optim.betas must have two values, got {self.betas}")
        if not 0.0 < self.lr < float("inf"):
            raise ConfigError(f"optim.lr must be a positive number, got {self.lr}")
        if not all(0.0 <= b < 1.0 for b in self.betas) or not self.eps > 0 or self.weight_decay < 0:
            raise ConfigError(f"optim.betas must be in [0, 1), optim.eps > 0 and optim.weight_decay >= 0, "
                              f"got {self.betas}, {self.eps}, {self.weight_decay}")
        if self.warmup_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"optim.warmup_steps must be >= 0 and optim.min_lr_ratio in [0, 1], got "
                              f"{self.warmup_steps}, {self.min_lr_ratio}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"optim.ema_decay must be in [0, 1), got {self.ema_decay}")


@dataclass
class LossConfig:
    lambda_ce: float = 1.0                # loss = lambda_ce * CE + MSE
    timestep_shift: float = 1.0           # training timestep shift s (t' = s t / (1 + (s-1) t))
    timestep_logit_std: float = 1.0       # t = sigmoid(N(0, std^2)) before the shift (SD3's logit-normal)
    timestep_mix_frac: float = 0.0        # share of times drawn with timestep_mix_shift instead (a mixture)
    timestep_mix_shift: float = 1.0
    max_nonfinite_steps: int = 5          # stop after this many consecutive NaN/inf losses

    def __post_init__(self):
        if (self.max_nonfinite_steps < 1 or not self.timestep_shift > 0 or not self.timestep_logit_std > 0
                or self.lambda_ce < 0 or not 0.0 <= self.timestep_mix_frac <= 1.0
                or not self.timestep_mix_shift > 0):
            raise ConfigError(f"loss.max_nonfinite_steps must be >= 1, loss.timestep_shift and "
                              f"loss.timestep_logit_std, loss.timestep_mix_shift > 0, loss.lambda_ce >= 0, "
                              f"loss.timestep_mix_frac in [0, 1]; got {self.max_nonfinite_steps}, "
                              f"{self.timestep_shift}, {self.timestep_logit_std}, {self.timestep_mix_shift}, "
                              f"{self.lambda_ce}, {self.timestep_mix_frac}")


@dataclass
class TrainerConfig:
    """Keys are lightning.Trainer's own argument names, passed through unchanged."""

    max_steps: int = 1000
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: Any = "32-true"
    default_root_dir: str = "runs"
    gradient_clip_val: float | None = 1.0
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 10
    val_check_interval: int | None = 200  # in training steps
    limit_val_batches: int | None = 4
    num_sanity_val_steps: int = 0
    enable_progress_bar: bool = True
    enable_checkpointing: bool = True
    deterministic: bool = False

    def __post_init__(self):
        # The stream is endless (no epochs), so max_steps is the only end: -1 would never stop.
        for key in ("max_steps", "num_nodes", "accumulate_grad_batches", "log_every_n_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"trainer.{key} must be >= 1, got {getattr(self, key)}")
        if self.val_check_interval is not None and self.val_check_interval < 1:
            raise ConfigError(f"trainer.val_check_interval must be >= 1 step (or null), got "
                              f"{self.val_check_interval}")
        if self.gradient_clip_val is not None and self.gradient_clip_val <= 0:
            raise ConfigError(f"trainer.gradient_clip_val must be > 0 (or null: off), "
                              f"got {self.gradient_clip_val}")


@dataclass
class LoggingConfig:
    name: str = "procpaint"                         # TensorBoard experiment name under default_root_dir
    checkpoint_every_n_steps: int = 500
    trajectory_every_n_steps: int = 0               # log sampled trajectory strips (0: off)
    val_prompts: list[str] = field(default_factory=list)   # TensorBoard trajectory prompts; empty: the
                                                            # closing eval's first prompt of each tag
    final_eval_prompts: int = 48                    # held-out GenEval prompts judged at the end, spread
                                                    # evenly over the six tags (0: off)

    def __post_init__(self):
        if self.checkpoint_every_n_steps < 1:
            raise ConfigError(f"logging.checkpoint_every_n_steps must be >= 1, "
                              f"got {self.checkpoint_every_n_steps}")
        if self.trajectory_every_n_steps < 0 or self.final_eval_prompts < 0:
            raise ConfigError("logging.trajectory_every_n_steps and logging.final_eval_prompts must be >= 0")


@dataclass
class SamplingConfig:
    """How images are sampled: fit.py's trajectory logging and closing eval, and the defaults
    ``train/sample.py`` and ``train/evaluate.py`` read from a checkpoint's config.yaml (their flags
    override). Field meanings: :class:`procpaint.inference.GenerationConfig`."""

    # 10 flow points and text CFG 4 (benchmarks/results/2026-12-03-sampling-cpu.md): on the default
    # run's export, 240 GenEval prompts in process mode score 0.16 (95% CI 0.11-0.21) against 0.15
    # with 20 points and 0.10 (0.05-0.14) without CFG, at half the flow evaluations of 20 points.
    num_steps: int = 10
    timestep_shift: float = 3.0
    cfg_text_scale: float = 4.0
    cfg_image_scale: float = 1.0
    cfg_interval: list[float] = field(default_factory=lambda: [0.0, 1.0])
    cfg_renorm: str = "global"
    cfg_renorm_min: float = 0.0
    sde_noise: float = 0.0

    def __post_init__(self):
        try:
            self.generation_config().validate()
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"sampling: {exc}") from exc

    def generation_config(self, **overrides):
        """A :class:`GenerationConfig` with these settings (``overrides``: mode, seed, ...)."""
        from procpaint.inference.types import GenerationConfig

        if len(self.cfg_interval) != 2:
            raise ConfigError(f"sampling.cfg_interval must be [lo, hi], got {list(self.cfg_interval)}")
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["cfg_interval"] = tuple(float(x) for x in d["cfg_interval"])
        return GenerationConfig(**{**d, **overrides})


@dataclass
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = field(default_factory=ModelGroup)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    ckpt_path: str | None = None          # resume from this Lightning checkpoint
    # Fine-tune: start from the weights of this procpaint checkpoint (.ckpt) or export directory,
    # with its latent statistics and tokenizer; optimizer, schedule and step count start afresh
    # (train/reproduce.py fine-tunes every row from one shared base this way). Resuming a fine-tune
    # takes ckpt_path as usual; its weights then replace these.
    finetune_from: str | None = None

    def __post_init__(self):
        if self.model.preset not in PRESETS:
            raise ConfigError(f"model.preset {self.model.preset!r} unknown; choose from {sorted(PRESETS)}")
        mc = self.model_config()
        if self.data.image_size % mc.pixels_per_token:
            raise ConfigError(f"data.image_size ({self.data.image_size}) must be divisible by "
                              f"model.patch_size * model.latent_downsample ({mc.pixels_per_token})")
        side = self.data.image_size // mc.pixels_per_token
        if side > mc.max_latent_size:
            raise ConfigError(f"data.image_size ({self.data.image_size}) gives {side} latent tokens per "
                              f"side, more than model.max_latent_size ({mc.max_latent_size})")
        if side * side + 4 > self.data.max_tokens:
            raise ConfigError(f"data.max_tokens ({self.data.max_tokens}) is smaller than one image "
                              f"({side * side} latent tokens + markers)")
        self._check_drawable(mc)
        # The smallest sample holds one image (latents + 2 markers) and at least one text token.
        need = side * side + 3
        per_sample = self.data.max_tokens_per_sample
        if per_sample is not None and per_sample < need:
            raise ConfigError(f"data.max_tokens_per_sample ({per_sample}) cannot hold one image "
                              f"({side * side} latent tokens + 2 markers) plus its prompt: every sample "
                              f"would be skipped; "
                              f"use at least {need} (real samples need several times that) or null")

    def _check_drawable(self, mc: ModelConfig) -> None:
        """Reject a world the judge cannot separate or a model that cannot draw it (docs/ARCHITECTURE.md,
        "Lessons measured")."""
        if mc.latent_dim > mc.hidden_size:
            raise ConfigError(
                f"model.patch_size ({mc.patch_size}) makes latent tokens of {mc.latent_dim} channels, more "
                f"than model.hidden_size ({mc.hidden_size}): the velocity head (rank <= hidden_size) cannot "
                f"predict the noise in the other channels, so images stay noisy (measured: the flow loss "
                f"plateaus near the missing fraction); use a smaller patch_size or a wider model")
        if self.data.root is not None and self.logging.final_eval_prompts == 0:
            return                                  # the user's own images, judged elsewhere
        from procpaint.world.scene import GRID, SIZE_FRACTION

        smallest = self.data.image_size * 2 * SIZE_FRACTION["small"] / GRID      # px across
        if smallest < MIN_OBJECT_PX:
            need = int(-(-MIN_OBJECT_PX * GRID // (2 * SIZE_FRACTION["small"])))
            raise ConfigError(f"data.image_size ({self.data.image_size}) draws a small object {smallest:.1f} "
                              f"px across: below {MIN_OBJECT_PX} px the detector cannot tell the six shapes "
                              f"apart (measured down to a 32 px canvas); use data.image_size >= {need}")
        if smallest < mc.pixels_per_token:
            raise ConfigError(f"model.patch_size: a small object ({smallest:.1f} px at data.image_size="
                              f"{self.data.image_size}) is smaller than one latent patch "
                              f"({mc.pixels_per_token} px): the model cannot draw its shape")

    def model_config(self, vocab_size: int | None = None, **measured) -> ModelConfig:
        """The ModelConfig of this experiment; ``measured``: data-derived fields (latent_mean/std)."""
        overrides = {f.name: getattr(self.model, f.name) for f in fields(ModelConfig)
                     if f.name not in DATA_DERIVED}
        try:
            return model_config(self.model.preset, vocab_size=vocab_size, **overrides, **measured)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc


def _load_yaml(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """Load a YAML, resolving a ``base:`` chain (each file holds only its differences)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: circular 'base:' chain {[str(p) for p in seen]}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        node = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = node.pop("base", None)
    if base is None:
        return node
    if not (path.parent / str(base)).is_file():
        raise ConfigError(f"{path}: base: {base!r} not found "
                          f"(looked for {(path.parent / str(base)).resolve()})")
    return OmegaConf.merge(_load_yaml(path.parent / str(base), (*seen, path)), node)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Merge defaults <- YAML file (with its ``base:`` chain) <- ``key=value`` overrides, validate,
    and return a :class:`Config` instance. Raises :class:`ConfigError` naming the bad key."""
    schema = OmegaConf.structured(Config)
    source = str(path) if path is not None else "<defaults>"
    try:
        layers = [schema]
        if path is not None:
            layers.append(_load_yaml(Path(path)))
        merged = OmegaConf.merge(*layers)
        source = "command line"
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value")
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        source = "validation"
        return OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        msg = getattr(exc, "msg", None) or str(exc)
        raise ConfigError(f"{source}: {msg.splitlines()[0]}" + (f" (key: {key})" if key else "")) from exc
    except ValueError as exc:  # __post_init__ contradictions not already ConfigError
        raise ConfigError(f"{source}: {exc}") from exc


def config_from_dict(data: dict) -> Config:
    """A Config from a plain dict (e.g. hyperparameters saved in a checkpoint), validated."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), data))


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
