"""``load_generator``: a :class:`Painter` from what ``train/fit.py`` writes.

Accepted:

- a Lightning checkpoint ``runs/<name>/version_N/checkpoints/*.ckpt``: ``hyper_parameters`` hold
  ``config`` (the experiment Config as a dict) and ``model_config`` (ModelConfig fields),
  ``state_dict`` keys are ``model.<...>`` (the EMA weights when EMA was on) and
  ``checkpoint["tokenizer_json"]`` is the tokenizer;
- an export directory ``runs/<name>/version_N/export/`` with model.safetensors,
  model_config.json, tokenizer.json and (optional) config.yaml.

Every problem is a :class:`CheckpointError` naming the file and what is missing or does not fit.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from procpaint.inference.painter import Painter
from procpaint.model import ModelConfig, build_model
from procpaint.sequence.tokenizer import TextTokenizer

DEFAULT_IMAGE_SIZE = 32     # DataConfig's default, for exports without config.yaml


class CheckpointError(ValueError):
    """A missing, unreadable or incompatible checkpoint, naming the file."""


@dataclass
class Weights:
    """What a checkpoint or an export holds: the model's weights (keys without the ``model.``
    prefix), its config, tokenizer, the image size it was trained at and its sampling defaults."""

    state: dict
    model_config: ModelConfig
    tokenizer: TextTokenizer
    image_size: int
    sampling: dict


def resolve_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, or a clear error when it is not available here."""
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"unknown device {device!r} (use cpu or cuda[:N])") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available on this machine "
                               f"(torch {torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise RuntimeError(f"device {device!r} is not supported for generation (use cpu or cuda)")
    return dev


def _model_config(data: dict, where: str) -> ModelConfig:
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CheckpointError(f"{where}: model config has fields this procpaint does not know: {unknown} "
                              "(written by a newer version?)")
    if "latent_mean" not in data:
        # Written before latent statistics existed: such a model was trained on raw latents, which
        # is exactly what None (identity) gives, so it loads unchanged; say so once.
        warnings.warn(f"{where}: no latent statistics (a checkpoint from before latent normalisation); "
                      "latents stay un-normalised, as this model was trained", stacklevel=3)
    try:
        return ModelConfig(**data)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: invalid model config: {e}") from e


def _tokenizer(source: str, where: str, from_file: bool) -> TextTokenizer:
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(source) if from_file else Tokenizer.from_str(source)
        return TextTokenizer(tok)
    except Exception as e:  # tokenizers raises its own Exception type on bad JSON
        raise CheckpointError(f"{where}: unusable tokenizer: {e}") from e


def _read_ckpt(path: Path) -> Weights:
    try:
        # A Lightning checkpoint holds plain dicts of hyperparameters besides tensors; it is the
        # user's own training output, so the full unpickler is acceptable here.
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: no 'state_dict' (expected a Lightning checkpoint from train/fit.py)")
    hp = ckpt.get("hyper_parameters") or {}
    if "model_config" not in hp:
        raise CheckpointError(f"{path}: hyper_parameters lack 'model_config' (not a procpaint checkpoint?)")
    if "tokenizer_json" not in ckpt:
        raise CheckpointError(f"{path}: no 'tokenizer_json' (train/fit.py checkpoints carry one)")
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    if not state:
        raise CheckpointError(f"{path}: state_dict has no 'model.*' weights")
    train_cfg = hp.get("config") or {}
    image_size = train_cfg.get("data", {}).get("image_size", DEFAULT_IMAGE_SIZE)
    return Weights(state, _model_config(dict(hp["model_config"]), str(path)),
                   _tokenizer(ckpt["tokenizer_json"], str(path), False), int(image_size),
                   dict(train_cfg.get("sampling") or {}))


def _read_export(path: Path) -> Weights:
    need = ["model.safetensors", "model_config.json", "tokenizer.json"]
    missing = [n for n in need if not (path / n).is_file()]
    if missing:
        raise CheckpointError(f"{path}: export directory lacks {missing} (train/fit.py writes "
                              f"{need + ['config.yaml']})")
    from safetensors.torch import load_file

    try:
        state = load_file(str(path / "model.safetensors"))
    except Exception as e:
        raise CheckpointError(f"{path / 'model.safetensors'}: unreadable ({e})") from e
    try:
        mc = json.loads((path / "model_config.json").read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / 'model_config.json'}: not valid JSON ({e})") from e
    image_size, sampling = DEFAULT_IMAGE_SIZE, {}
    if (path / "config.yaml").is_file():
        from omegaconf import OmegaConf

        train_cfg = OmegaConf.to_container(OmegaConf.load(path / "config.yaml"))
        image_size = int(train_cfg.get("data", {}).get("image_size", image_size))
        sampling = dict(train_cfg.get("sampling") or {})
    return Weights(state, _model_config(mc, str(path / "model_config.json")),
                   _tokenizer(str(path / "tokenizer.json"), str(path / "tokenizer.json"), True), image_size,
                   sampling)


def read_weights(path: str | Path) -> Weights:
    """The :class:`Weights` of a ``.ckpt`` file or an export directory; :class:`CheckpointError`
    naming the file when it is missing, unreadable or its tokenizer does not fit its model."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    w = _read_export(path) if path.is_dir() else _read_ckpt(path)
    if w.tokenizer.vocab_size != w.model_config.vocab_size:
        raise CheckpointError(f"{path}: tokenizer has {w.tokenizer.vocab_size} tokens but the model was built "
                              f"for {w.model_config.vocab_size}: they do not belong together")
    return w


def load_state(model: torch.nn.Module, state: dict, where: str | Path) -> None:
    """Load ``state`` into ``model`` exactly (non-persistent codec state is rebuilt, so keys under
    ``codec.`` may be absent); :class:`CheckpointError` naming ``where`` when the weights do not fit."""
    try:
        result = model.load_state_dict({k: v for k, v in state.items() if not k.startswith("codec.vae.")},
                                       strict=False)
    except RuntimeError as e:                       # shape mismatches
        raise CheckpointError(f"{where}: weights do not fit the model config: {e}") from e
    missing = [k for k in result.missing_keys if not k.startswith("codec.")]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{where}: weights do not fit the model config: missing {missing[:5]}"
                              f"{'...' if len(missing) > 5 else ''}, unexpected {result.unexpected_keys[:5]}")


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> Painter:
    """A :class:`Painter` from a ``.ckpt`` file or an export directory, on ``device``."""
    dev = resolve_device(device)
    w = read_weights(path)
    try:
        model = build_model(w.model_config, device=dev, load_init=False)   # its own weights follow
    except (FileNotFoundError, ImportError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot build its model: {e}") from e
    load_state(model, w.state, path)
    model.requires_grad_(False).eval()
    return Painter(model, w.tokenizer, image_size=w.image_size, source=str(path), sampling=w.sampling)
