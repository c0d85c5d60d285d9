"""On-disk trajectory format, subset builders, validation and loading (data/README.md).

``BuildConfig`` configures the procedural dataset builder (``data/build.py``); the experiment's
``data:`` group is ``procpaint.config.DataConfig``. ``DataConfig`` / ``PRESETS`` here are the builder's
old names, kept for code written before the rename.
"""

from .config import BUILD_PRESETS, FORMAT_VERSION, SUBSETS, BuildConfig, preset
from .loader import TrajectoryDataset, load_image, record_to_sample
from .store import build_dataset, with_samples
from .validate import check_record, validate

DataConfig = BuildConfig          # old name (before the experiment config's DataConfig was told apart)
PRESETS = BUILD_PRESETS

__all__ = ["BUILD_PRESETS", "FORMAT_VERSION", "SUBSETS", "BuildConfig", "DataConfig", "PRESETS",
           "TrajectoryDataset", "build_dataset", "check_record", "load_image", "preset", "record_to_sample",
           "validate", "with_samples"]
