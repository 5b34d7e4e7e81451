"""hskstore: extract a teacher's compressed hidden-state knowledge once, distil students from it anywhere.

The library is usable without the CLI:

    from hskstore import Compression, ExtractConfig, run_extract, open_store, TrainConfig, run_train

The pipeline's modules keep their names (`hskstore.extract`, `hskstore.train`, `hskstore.finetune` are
modules); their entry points are re-exported as `run_*`, so no name here shadows a module. Names load
on first use: `import hskstore` (and `hskstore --help`) does not import torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> (module, attribute)
_EXPORTS = {
    "Compression": ("config", "Compression"),
    "ResolvedCompression": ("config", "ResolvedCompression"),
    "layer_mapping": ("config", "layer_mapping"),
    "HskError": ("errors", "HskError"),
    "ConfigError": ("errors", "ConfigError"),
    "DataError": ("errors", "DataError"),
    "ModelError": ("errors", "ModelError"),
    "StoreError": ("errors", "StoreError"),
    "load_task": ("data", "load_task"),
    "FinetuneConfig": ("finetune", "FinetuneConfig"),
    "run_finetune": ("finetune", "finetune"),
    "ExtractConfig": ("extract", "ExtractConfig"),
    "run_extract": ("extract", "extract"),
    "store_info": ("report", "store_info"),
    "open_store": ("store", "open_store"),
    "build_bert_student": ("student", "build_bert_student"),
    "build_rosita": ("student", "build_rosita"),
    "load_student": ("student", "load_student"),
    "save_student": ("student", "save_student"),
    "TrainConfig": ("train", "TrainConfig"),
    "Trainer": ("train", "Trainer"),
    "run_train": ("train", "train"),
    "evaluate_student": ("evaluate", "evaluate_student"),
    "predict_texts": ("evaluate", "predict_texts"),
    "export_student": ("export", "export_student"),
}

_MODULES = ("config", "errors", "data", "tables", "glue_files", "finetune", "teacher", "select", "extract", "store",
            "stream", "student", "losses", "schedules", "train", "evaluate", "metrics", "report", "export",
            "pipeline", "device", "outputs", "cli")

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        module, attribute = _EXPORTS[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attribute)
        globals()[name] = value  # later lookups skip this hook
        return value
    if name in _MODULES:  # `hskstore.extract.ExtractConfig` works after a bare `import hskstore`
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'hskstore' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
