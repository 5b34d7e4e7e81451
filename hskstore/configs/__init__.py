"""The stages' and experiments' configs: frozen dataclasses whose fields declare their command-line options.

They live apart from the stages, which import torch, so that `hskstore --help` and every command's help
read them without it (`hskstore.options` turns their fields into click options). Each stage imports
its own config from here; `hskstore.stages.train.TrainConfig` and the like still work.
"""
