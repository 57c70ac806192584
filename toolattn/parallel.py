"""Several processes (or GPUs) on one analysis: its chunks are the unit of work.

``accelerate launch --num_processes N -m analyses.<name> ...`` starts N copies of an analysis. Each
computes and writes its share of the chunks (``PartialState.split_between_processes``, in order); the
main process then waits for the others' chunk files, reads every chunk and writes the tables, figures,
result and manifest. A single process (no launcher) computes every chunk itself. Each process runs
on its own GPU (``cuda:<local rank>``, see ``toolattn.device``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

WAIT_S = float(os.environ.get("TOOLATTN_CHUNK_WAIT_S", 24 * 3600))


def world() -> tuple[int, int]:
    """``(process index, number of processes)`` under ``accelerate launch`` (or torchrun); ``(0, 1)`` alone."""
    n = int(os.environ.get("WORLD_SIZE", "1"))
    if n <= 1:
        return 0, 1
    from accelerate import PartialState

    state = PartialState()
    return state.process_index, state.num_processes


def is_main() -> bool:
    return world()[0] == 0


def my_share(names: list[str]) -> list[str]:
    """The chunk names this process computes: a contiguous share, as accelerate splits them."""
    if world()[1] == 1:
        return list(names)
    from accelerate import PartialState

    with PartialState().split_between_processes(list(names)) as part:
        return list(part)


def wait_for(paths: list[Path], timeout: float = WAIT_S, poll: float = 0.5) -> None:
    """Block until every file exists (chunks written by the other processes)."""
    t0 = time.time()
    while not all(p.exists() for p in paths):
        if time.time() - t0 > timeout:
            missing = [str(p) for p in paths if not p.exists()]
            raise TimeoutError(f"chunks not written by the other processes after {timeout:.0f}s: {missing[:3]}")
        time.sleep(poll)
