"""torchrun entry point for tests/runtime/test_agreement.py: the ways ranks agree, on 2 gloo processes.

    HSKSTORE_DIST_TIMEOUT=5 python -m torch.distributed.run --standalone --nproc-per-node 2 \
        tests/runtime/_agreement_probe.py OUT_DIR

Each rank runs the same scenarios in order and writes what it saw to OUT_DIR/rank{R}.json after each
one (so a hang still leaves the earlier ones). The last scenario breaks the group on purpose: rank 1
is late for a barrier until rank 0 has given up waiting for it (HSKSTORE_DIST_TIMEOUT), at most LATE_S.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hskstore.errors import ConfigError, HskError
from hskstore.runtime import distributed

LATE_S = 30


def _wait_for(path: Path, key: str, seconds: float) -> None:
    """Until another rank's record names `key` (or `seconds` pass)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if key in json.loads(path.read_text()):
                return
        except (OSError, ValueError):  # not written yet, or caught mid-write
            pass
        time.sleep(0.05)


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    world, device = distributed.setup("cpu")
    seen: dict = {"rank": world.rank}

    def record(key, value):
        seen[key] = value
        (out / f"rank{world.rank}.json").write_text(json.dumps(seen))

    # 1. broadcast_object: rank 0's value, int keys, tuples, paths and tensors of every kind included.
    value = {"epoch": 3, 7: (1.5, None, True), "path": Path("/x/checkpoint"), "n": np.int64(4),
             "t": torch.arange(6, dtype=torch.float32).reshape(2, 3),
             "h": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
             "b": torch.tensor([True, False, True]), "step": torch.tensor(5.0), "empty": torch.zeros(0, 4)}
    mine = value if world.is_main else {"something": "else"}
    got = distributed.broadcast_object(mine, world)
    record("broadcast", {
        "keys": sorted(map(repr, got)),
        "tuple": list(got[7]) if isinstance(got[7], tuple) else None,
        "path": str(got["path"]) if isinstance(got["path"], Path) else None,
        "n": [int(got["n"]), type(got["n"]).__name__ if not world.is_main else "int"],
        "tensors_equal": all(torch.equal(got[k], value[k]) and got[k].dtype == value[k].dtype
                             for k in ("t", "h", "b", "step", "empty")),
        "empty_shape": list(got["empty"].shape),
    })

    # 2. run_on_main: only rank 0 runs the function; everyone gets its result.
    ran = []
    result = distributed.run_on_main(world, "counting", lambda: ran.append(world.rank) or {"by": world.rank})
    record("run_on_main", {"ran": ran, "result": result})

    # 3. run_on_main failing on rank 0: rank 0 re-raises its own error, the others a one-line one.
    def fail():
        raise ConfigError("output is a file")

    try:
        distributed.run_on_main(world, "preparing the output", fail)
        record("run_on_main_failure", None)
    except HskError as exc:
        record("run_on_main_failure", {"type": type(exc).__name__, "message": str(exc)})

    # 4. share_state: a module and an optimizer that only rank 0 has stepped.
    torch.manual_seed(world.rank)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    if world.is_main:
        model(torch.ones(2, 4)).sum().backward()
        optimizer.step()
    distributed.share_state(model, world)
    distributed.share_state(optimizer, world)
    state = optimizer.state_dict()
    record("share_state", {
        "weight": model.weight.detach().flatten().tolist(),
        "exp_avg": state["state"][0]["exp_avg"].flatten().tolist() if state["state"] else None,
        "step": float(state["state"][0]["step"]) if state["state"] else None,
    })

    # 5. Lockstep: 3 items on rank 0, 1 on rank 1, then a failure on rank 1's second item.
    done = []
    with distributed.Lockstep(world, "counting items", device) as lockstep:
        for item in lockstep.each(range(3 if world.is_main else 1)):
            done.append(item)
    record("lockstep", {"done": done})
    started = time.perf_counter()
    try:
        with distributed.Lockstep(world, "extracting its chunks", device) as lockstep:
            for item in lockstep.each(range(5)):
                if world.rank == 1 and item == 1:
                    raise RuntimeError("out of memory on purpose")
                if world.is_main:
                    time.sleep(0.2)
        record("lockstep_failure", None)
    except Exception as exc:
        record("lockstep_failure", {"type": type(exc).__name__, "message": str(exc),
                                    "seconds": time.perf_counter() - started})

    # 6. The collective timeout is the one HSKSTORE_DIST_TIMEOUT set: rank 0 gives up waiting for a late rank 1.
    started = time.perf_counter()
    try:
        if world.rank == 1:  # late: until rank 0 has timed out at the barrier and recorded it
            _wait_for(out / "rank0.json", "late_barrier", LATE_S)
        distributed.barrier(world)
        record("late_barrier", {"raised": False, "seconds": time.perf_counter() - started})
    except Exception as exc:  # noqa: BLE001 (gloo's timeout error has no public class)
        record("late_barrier", {"raised": True, "seconds": time.perf_counter() - started,
                                "message": str(exc).splitlines()[0][:200]})


if __name__ == "__main__":
    main()
