"""`lfads serve`: a warm worker that runs jobs one after another in the same process.

Starting a worker costs a new interpreter and several seconds of imports (torch, Lightning,
MLflow); PBT runs many short jobs, so the local launcher keeps such processes warm. Protocol:
one line `RUN_ID TRACKING_URI` per job on stdin, one line `done RUN_ID EXIT_CODE` back per job.
Everything the job prints goes to stderr (the slot's log); stdout carries only the protocol.
EOF at stdin ends the process after the current job.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time


def serve() -> int:
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # job output -> the log, never the pipe
    import lightning  # noqa: F401
    import torch  # noqa: F401

    from lfads_lightning.worker.entry import run_worker  # the expensive imports, once

    def reply(text: str) -> None:
        # The controller may be gone (killed): the job must still finish and close its run,
        # so that a resumed controller can adopt it. A dead reader must not kill us.
        with contextlib.suppress(OSError):
            protocol.write(text + "\n")

    reply("ready")
    for line in sys.stdin:
        parts = line.split()
        if len(parts) != 2:
            continue
        run_id, uri = parts
        print(f"=== {time.strftime('%H:%M:%S')} job {run_id}", file=sys.stderr, flush=True)
        code = run_worker(run_id, uri)
        sys.stderr.flush()
        reply(f"done {run_id} {code}")
    return 0
