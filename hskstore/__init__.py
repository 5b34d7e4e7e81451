"""hskstore: extract a teacher's compressed hidden-state knowledge once, distil students from it anywhere.

The library is usable without the CLI:

    from hskstore import Compression, ExtractConfig, extract, open_store, TrainConfig, train
"""

__version__ = "0.1.0"

from .config import Compression, ResolvedCompression, layer_mapping  # noqa: E402
from .errors import ConfigError, DataError, HskError, ModelError, StoreError  # noqa: E402
from .extract import ExtractConfig, extract  # noqa: E402
from .finetune import FinetuneConfig, finetune  # noqa: E402
from .report import store_info  # noqa: E402
from .store import open_store  # noqa: E402
from .student import build_bert_student, build_rosita, load_student, save_student  # noqa: E402
from .train import TrainConfig, Trainer, train  # noqa: E402

__all__ = [
    "__version__",
    "Compression",
    "ResolvedCompression",
    "layer_mapping",
    "HskError",
    "ConfigError",
    "DataError",
    "ModelError",
    "StoreError",
    "ExtractConfig",
    "extract",
    "FinetuneConfig",
    "finetune",
    "store_info",
    "open_store",
    "build_bert_student",
    "build_rosita",
    "load_student",
    "save_student",
    "TrainConfig",
    "Trainer",
    "train",
]
