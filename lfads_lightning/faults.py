"""Fault injection for the tests: named points in the controller and the member job.

Production code calls `point(name, **where)` at a handful of places; with the environment
variable LFADS_FAULTS unset (always, outside the tests) it returns None and does nothing. Nothing
here writes to the MLflow store: a worker inherits LFADS_FAULTS from its launcher (the local
launcher passes its environment on, sbatch exports it; Kubernetes pods get it through the
`kubernetes.env` launcher option) and learns its member/attempt from its own run's tags.

Syntax: entries separated by `;`, each `POINT[KEY=VALUE,...]=ACTION`; the `[...]` selector is
optional and every KEY must match a keyword given to `point` (VALUE may list alternatives with
`|`). Examples:

    LFADS_FAULTS="controller.after_submit[generation=1]=kill"
    LFADS_FAULTS="member.start[member=1,generation=0,attempt=0|1]=exit; member.fitness[member=2]=nan"

Actions: `crash` (raise RuntimeError("injected crash")), `exit` (os._exit(3), no cleanup),
`hang` (sleep an hour), `kill` (SIGKILL this process), `oom` (fill memory until a memory
limit kills the process: a pod over its limit is OOMKilled; raises MemoryError past
OOM_CAP_BYTES, so without a limit it stops there instead of exhausting the host); any other action (`nan`) is returned to
the caller, which acts on it.

Points:
    controller.mid_creation     (generation)   after each member run of a generation is created
    controller.after_submit     (generation)   after a batch of member jobs is submitted
    controller.after_decisions  (generation)   after a generation's decisions are logged
    member.start                (member, generation, attempt)   after the first heartbeat
    member.fitness              (member, generation, attempt)   `nan`: report a NaN fitness
"""

from __future__ import annotations

import os
import re
import signal
import time

ENV = "LFADS_FAULTS"
POINTS = (
    "controller.mid_creation",
    "controller.after_submit",
    "controller.after_decisions",
    "member.start",
    "member.fitness",
)
OOM_CAP_BYTES = 8 << 30
_ENTRY = re.compile(r"^\s*([\w.]+)\s*(?:\[([^\]]*)\])?\s*=\s*(\w+)\s*$")


def parse(text: str) -> list[tuple[str, dict[str, set[str]], str]]:
    """`LFADS_FAULTS` -> [(point, {key: allowed values}, action)]; a malformed entry raises."""
    entries = []
    for part in filter(str.strip, text.split(";")):
        match = _ENTRY.match(part)
        if match is None or match.group(1) not in POINTS:
            raise ValueError(
                f"{ENV}: cannot parse {part.strip()!r} (see lfads_lightning/faults.py)"
            )
        name, selector, action = match.groups()
        where: dict[str, set[str]] = {}
        for item in filter(str.strip, (selector or "").split(",")):
            key, sep, values = item.partition("=")
            if not sep:
                raise ValueError(f"{ENV}: selector {item!r} in {part.strip()!r} is not KEY=VALUE")
            where[key.strip()] = {v.strip() for v in values.split("|")}
        entries.append((name, where, action))
    return entries


def point(name: str, **where: object) -> str | None:
    """Do what LFADS_FAULTS says for this point (first matching entry); None: nothing to do."""
    text = os.environ.get(ENV)
    if not text:
        return None
    for entry, selector, action in parse(text):
        if entry == name and all(str(where.get(k)) in v for k, v in selector.items()):
            return _act(action)
    return None


def _act(action: str) -> str | None:
    if action == "crash":
        raise RuntimeError("injected crash")
    if action == "exit":
        os._exit(3)
    if action == "hang":
        time.sleep(3600)
        return None
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "oom":
        _fill_memory(OOM_CAP_BYTES)
    return action


def _fill_memory(cap: int, chunk: int = 32 << 20) -> None:
    """Allocate and touch memory in chunks (real pages, not lazy zeros) until killed or `cap`."""
    held = []
    while len(held) * chunk < cap:
        held.append(b"\x01" * chunk)
    raise MemoryError(f"injected oom: {cap} bytes allocated and no memory limit stopped it")
