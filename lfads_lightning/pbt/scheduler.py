"""The one submit/poll/retry loop, driving a PBT generation and an Optuna search alike.

`Scheduler.run` keeps up to `concurrency` member jobs running: it takes members from `pending`
(queued runs, retries), then asks `ask()` for a new one (search: the next trial; PBT: none),
submits what fits as one batch (the SLURM launcher sends a batch as one job array), checks each
running member once per pass, and hands a failed attempt to `fail`, which returns the retry to
queue (or None: given up). `on_done(member, outcome)` is called once per member that finished or
was given up. `stop()` is called once per pass and ends the loop by raising (`lfads pbt stop`). The launcher is reached only through the `submit`, `check` and `fail` callables
(the controller's methods), so the loop itself knows neither MLflow nor a launcher.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable

from lfads_lightning import faults
from lfads_lightning.runs.schema import FINISHED, MemberRun

Submit = Callable[[list[MemberRun]], list[MemberRun]]
Check = Callable[[MemberRun], "str | None"]
Fail = Callable[[MemberRun, str], "MemberRun | None"]


class Scheduler:
    def __init__(
        self,
        submit: Submit,
        check: Check,
        fail: Fail,
        concurrency: int = 1,
        poll_interval: float = 1.0,
        stop: Callable[[], None] | None = None,
    ) -> None:
        self.submit, self.check, self.fail = submit, check, fail
        self.stop = stop  # called once per pass; raises to end the loop (a stop request)
        self.concurrency = max(1, concurrency)
        self.poll_interval = poll_interval

    def run(
        self,
        pending: Iterable[MemberRun],
        running: Iterable[MemberRun] = (),
        ask: Callable[[], MemberRun | None] | None = None,
        on_done: Callable[[MemberRun, str], None] | None = None,
    ) -> None:
        """Until nothing is pending, running or left to ask (`ask` returning None: no more)."""
        queue: deque[MemberRun] = deque(pending)
        active = {m.member: m for m in running}
        asking = ask is not None
        while True:
            if self.stop is not None:
                self.stop()
            batch: list[MemberRun] = []
            while len(active) + len(batch) < self.concurrency and (queue or asking):
                m = queue.popleft() if queue else ask()  # type: ignore[misc]
                if m is None:
                    asking = False
                else:
                    batch.append(m)
            if batch:
                for m in self.submit(batch):
                    active[m.member] = m
                faults.point("controller.after_submit", generation=batch[0].generation)
            for key, m in list(active.items()):
                outcome = self.check(m)
                if outcome is None:
                    continue
                del active[key]
                retry = None if outcome == FINISHED else self.fail(m, outcome)
                if retry is not None:
                    queue.append(retry)
                elif on_done is not None:
                    on_done(m, outcome)
            if not (queue or active or asking):
                return
            time.sleep(self.poll_interval)
