"""torchrun entry point for the 2-process tests: the real `hskstore` CLI, with a recorder and a fault patched in.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/_torchrun_probe.py \
        PROBE_DIR FAULT hskstore-args...

Every rank appends the rows of each training batch it stages to PROBE_DIR/rows-rank{R}.jsonl; rank 0
writes the training history with its per-step losses to PROBE_DIR/history.json at every checkpoint.

FAULT says what goes wrong on rank 1 (the last rank, rank 0 of a single process, for `N`):
- `0`: nothing;
- `N` (N > 0): that rank dies (os._exit, like a killed process: no cleanup) after its N-th written chunk
  (extract) or training step (train);
- `raise:N`: rank 1's N-th teacher batch raises an out-of-memory error (extract), the time of it in
  PROBE_DIR/raised-at; rank 1 then lingers before exiting, as a rank on another machine would, whose
  death torchrun's agent on this machine does not see: the other ranks must learn of it themselves.

With HSKSTORE_PROBE_NODE_LOCAL=1 in the environment, rank R > 0 gets `--output X.rank{R}`: the output
of a machine-local directory, which rank 0's files never reach.
"""

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

LINGER_S = 120


def _node_local(args: list[str], rank: int) -> list[str]:
    if rank == 0 or os.environ.get("HSKSTORE_PROBE_NODE_LOCAL") != "1":
        return args
    out = list(args)
    at = out.index("--output") + 1
    out[at] = f"{out[at]}.rank{rank}"
    return out


def main():
    probe, fault, args = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    rank = int(os.environ.get("RANK", 0))
    args = _node_local(args, rank)
    probe.mkdir(parents=True, exist_ok=True)
    raising = fault.startswith("raise:")
    crash_at = 0 if raising else int(fault)
    raise_at = int(fault.split(":", 1)[1]) if raising else 0
    counts = {"chunks": 0, "steps": 0, "batches": 0}

    import torch

    from hskstore.method.select import Selector
    from hskstore.store.base import StoreWriter
    from hskstore.stages.train import Trainer

    def die_at(kind):
        counts[kind] += 1
        if crash_at and rank == min(1, int(os.environ.get("WORLD_SIZE", 1)) - 1) and counts[kind] >= crash_at:
            os._exit(17)

    write_chunk = StoreWriter.write_chunk
    one_at_a_time = threading.Lock()   # extract writes chunks from several threads: die after exactly CRASH_AT

    def crashing_write_chunk(self, *a, **k):
        with one_at_a_time:
            write_chunk(self, *a, **k)
            die_at("chunks")

    run = Selector.run

    def raising_run(self, *a, **k):
        counts["batches"] += 1
        if raise_at and rank == 1 and counts["batches"] == raise_at:
            (probe / "raised-at").write_text(repr(time.time()))
            out_of_memory = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
            raise out_of_memory("CUDA out of memory (simulated by tests/_torchrun_probe.py)")
        return run(self, *a, **k)

    stage_batch, train_step, save_checkpoint = Trainer._stage_batch, Trainer._train_step, Trainer._save_checkpoint

    def recording_stage_batch(self, batch):
        with open(probe / f"rows-rank{rank}.jsonl", "a") as handle:
            handle.write(json.dumps(batch["input_ids"].tolist()) + "\n")
        return stage_batch(self, batch)

    def crashing_train_step(self, *a, **k):
        loss = train_step(self, *a, **k)
        die_at("steps")
        return loss

    def recording_save_checkpoint(self, *a, **k):
        save_checkpoint(self, *a, **k)
        (probe / "history.json").write_text(json.dumps(self.history))

    StoreWriter.write_chunk = crashing_write_chunk
    Selector.run = raising_run
    Trainer._stage_batch = recording_stage_batch
    Trainer._train_step = crashing_train_step
    Trainer._save_checkpoint = recording_save_checkpoint

    from hskstore.cli import cli, quick_exit_gc

    try:
        cli(args=args, prog_name="hskstore")
    except BaseException:
        if raising and rank == 1:
            traceback.print_exc()
            sys.stderr.flush()
            time.sleep(LINGER_S)
        raise
    finally:
        quick_exit_gc()  # as hskstore's main() does


if __name__ == "__main__":
    main()
