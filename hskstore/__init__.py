"""hskstore: extract a teacher's compressed hidden-state knowledge once, distil students from it anywhere.

The library is usable without the CLI:

    from hskstore import Compression, ExtractConfig, run_extract, open_store, TrainConfig, run_train

The package is laid out by role (docs/architecture.md): `method`, `models`, `data`, `runtime`, `store`,
`stages` (finetune -> extract -> train -> evaluate/export), `experiments`, and `cli` on top. The stages'
short names still work as attributes (`hskstore.extract` is the module `hskstore.stages.extract`); their
entry points are re-exported as `run_*`, so no name here shadows a module. Names load on first use:
`import hskstore` (and `hskstore --help`) does not import torch.
"""

from __future__ import annotations

import importlib

from .version import __version__

# public name -> (module, attribute)
_EXPORTS = {
    "Compression": ("method.compression", "Compression"),
    "ResolvedCompression": ("method.compression", "ResolvedCompression"),
    "layer_mapping": ("method.compression", "layer_mapping"),
    "HskError": ("errors", "HskError"),
    "ConfigError": ("errors", "ConfigError"),
    "DataError": ("errors", "DataError"),
    "ModelError": ("errors", "ModelError"),
    "StoreError": ("errors", "StoreError"),
    "load_task": ("data.tasks", "load_task"),
    "FinetuneConfig": ("configs.finetune", "FinetuneConfig"),
    "run_finetune": ("stages.finetune", "finetune"),
    "ExtractConfig": ("configs.extract", "ExtractConfig"),
    "run_extract": ("stages.extract", "extract"),
    "store_info": ("store.report", "store_info"),
    "open_store": ("store", "open_store"),
    "build_bert_student": ("models.student", "build_bert_student"),
    "build_rosita": ("models.student", "build_rosita"),
    "load_student": ("models.student", "load_student"),
    "save_student": ("models.student", "save_student"),
    "TrainConfig": ("configs.train", "TrainConfig"),
    "Trainer": ("stages.train", "Trainer"),
    "run_train": ("stages.train", "train"),
    "evaluate_student": ("stages.evaluate", "evaluate_student"),
    "predict_texts": ("stages.evaluate", "predict_texts"),
    "export_student": ("stages.export", "export_student"),
}

# Short names for the pipeline's modules: `hskstore.stages.extract.ExtractConfig` works after a bare `import hskstore`.
_MODULES = {
    "config": "method.compression", "strategies": "method.strategies", "select": "method.select",
    "losses": "method.losses", "teacher": "models.teacher", "student": "models.student", "data": "data",
    "tasks": "data.tasks", "tables": "data.tables", "glue_files": "data.glue_files", "metrics": "data.metrics",
    "device": "runtime.device", "outputs": "runtime.outputs", "schedules": "runtime.schedules", "store": "store",
    "stream": "store.stream", "report": "store.report", "finetune": "stages.finetune", "extract": "stages.extract",
    "train": "stages.train", "evaluate": "stages.evaluate", "export": "stages.export", "pipeline": "experiments.demo",
    "demo": "experiments.demo", "errors": "errors", "cli": "cli",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        module, attribute = _EXPORTS[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attribute)
        globals()[name] = value  # later lookups skip this hook
        return value
    if name in _MODULES:  # `hskstore.stages.extract.ExtractConfig` works after a bare `import hskstore`
        return importlib.import_module(f".{_MODULES[name]}", __name__)
    raise AttributeError(f"module 'hskstore' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
