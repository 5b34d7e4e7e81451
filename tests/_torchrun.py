"""`python tests/_torchrun.py ARGS` is `python -m torch.distributed.run ARGS` (torchrun) with a quick exit.

The launcher's interpreter shutdown walked every object of torch in several collections, ~0.7 s of CPU per
launch: like hskstore's CLI (`hskstore.cli.quick_exit_gc`) it collects once and freezes the rest first.
"""

import gc
import runpy
import sys

if __name__ == "__main__":
    sys.argv[0] = "torchrun"
    try:
        runpy.run_module("torch.distributed.run", run_name="__main__", alter_sys=True)
    finally:
        gc.collect()
        gc.freeze()
