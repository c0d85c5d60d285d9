"""On-disk trajectory format, subset builders, validation and loading (data/README.md)."""

from .config import FORMAT_VERSION, PRESETS, SUBSETS, DataConfig, preset
from .loader import TrajectoryDataset, load_image, record_to_sample
from .store import build_dataset, with_samples
from .validate import check_record, validate

__all__ = ["DataConfig", "FORMAT_VERSION", "PRESETS", "SUBSETS", "TrajectoryDataset", "build_dataset",
           "check_record", "load_image", "preset", "record_to_sample", "validate", "with_samples"]
