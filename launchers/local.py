"""Local launcher: worker jobs as processes of this machine.

Two modes. Cold (default for a single `lfads fit`): one `lfads worker` process per job, its
output on the terminal or in a log file. Warm (PBT): a few long-lived `lfads serve` processes
take jobs one after another, so a job does not pay interpreter start and imports again.

Every process runs in its own process group (cancelling also stops its children) and with a
fixed number of torch/OpenMP threads: several processes at default threads on a small machine
run many times slower than with one thread each.

Container mode (`local: {container: IMAGE}`): the same jobs, each `lfads ...` run in the image
by podman/docker (launchers/container.py); cancel stops the container, poll reads its exit code.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from launchers.base import JobHandle, JobState, Launcher
from launchers.container import Container, container_name, parse_options
from launchers.spec import THREAD_VARS, JobSpec, worker_args


def _env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads:
        env.update({var: str(threads) for var in THREAD_VARS})
    return env


def _kill_group(proc: subprocess.Popen, grace: float) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class _Slot:
    """One warm `lfads serve` process and the jobs it reported done."""

    proc: subprocess.Popen
    threads: int | None
    container: str | None = None  # its container's name in container mode
    mounts: tuple | None = None  # the tracking URI and paths its container was started with
    current: str | None = None
    done: dict[str, int] = field(default_factory=dict)
    lines: queue.Queue = field(default_factory=queue.Queue)

    def start_reader(self) -> None:
        def read() -> None:
            for raw in self.proc.stdout:  # type: ignore[union-attr]
                self.lines.put(raw.decode().strip())

        threading.Thread(target=read, daemon=True).start()

    def drain(self) -> None:
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return
            parts = line.split()
            if len(parts) == 3 and parts[0] == "done":
                self.done[parts[1]] = int(parts[2])
                if self.current == parts[1]:
                    self.current = None


class LocalLauncher(Launcher):
    name = "local"

    def __init__(self, python: str | None = None, warm: bool = False, **container: Any) -> None:
        self.python = python or sys.executable
        self.warm = warm
        self.container = Container(parse_options(container)) if container else None
        if self.container is not None and self.container.chown:
            # `:U` chowns a mount when its container starts; a warm container would not see
            # the folders the controller creates for later jobs (their runs' artifacts).
            self.warm = False
        self._names: dict[str, str] = {}  # pid -> container name (container mode)
        self._serial = itertools.count()  # numbers this launcher's container names
        self._procs: dict[str, subprocess.Popen] = {}
        self._slots: dict[int, _Slot] = {}
        self._cancelled: set[str] = set()  # warm jobs whose slot this launcher killed

    @staticmethod
    def _log_file(log_dir: str | None, name: str) -> IO[bytes] | None:
        if log_dir is None:
            return None
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        return open(Path(log_dir) / f"{name}.log", "ab")  # noqa: SIM115 - kept open for the child

    # ------------------------------------------------------------------ contract

    def submit(self, spec: JobSpec) -> JobHandle:
        run_id = spec.run_id
        if self.warm and spec.args == worker_args(run_id, spec.tracking_uri):
            return self._submit_warm(spec)
        log = self._log_file(spec.log_dir, run_id)
        command, name = [self.python, "-m", "lfads_lightning", *spec.args], None
        if self.container is not None:
            name = container_name(run_id, f"-{os.getpid()}-{next(self._serial)}")
            command = [*self.container.run_command(spec, name), *spec.args]
        proc = subprocess.Popen(
            command,
            env=_env(spec.threads),
            # without a log file the job's output (progress bars included) goes to our stderr:
            # stdout is the command's own (`lfads fit --json > result.json` must stay JSON)
            stdout=log if log is not None else 2,
            stderr=subprocess.STDOUT if log else None,
            start_new_session=True,
        )
        if log is not None:
            log.close()
        self._procs[str(proc.pid)] = proc
        info: dict[str, Any] = {"pid": proc.pid}
        if name is not None:
            self._names[str(proc.pid)] = info["container"] = name
        return JobHandle(self.name, str(proc.pid), run_id, info)

    def check(self, tracking_uri: str | None = None) -> None:
        if self.container is not None:
            self.container.check(tracking_uri)

    def poll(self, handle: JobHandle) -> JobState:
        pid = int(handle.info.get("pid", handle.job_id.split(":")[0]))
        if handle.info.get("warm"):
            if handle.job_id in self._cancelled:
                return JobState.CANCELLED
            slot = self._slots.get(pid)
            if slot is None:
                return JobState.RUNNING if _pid_alive(pid) else JobState.UNKNOWN
            slot.drain()
            if handle.run_id in slot.done:
                return JobState.SUCCEEDED if slot.done[handle.run_id] == 0 else JobState.FAILED
            if slot.proc.poll() is not None:
                return JobState.FAILED
            return JobState.RUNNING
        proc = self._procs.get(str(pid))
        if proc is None:
            # Started before a controller restart: only liveness can be known.
            name = handle.info.get("container")
            if self.container is not None and name:
                return JobState.RUNNING if self.container.exists(name) else JobState.UNKNOWN
            return JobState.RUNNING if _pid_alive(pid) else JobState.UNKNOWN
        code = proc.poll()
        if code is None:
            return JobState.RUNNING
        if self.container is not None and 128 < code < 160:
            code = 128 - code  # `run` exits 128+N when the job died of signal N (137: OOM kill)
        if code == 0:
            return JobState.SUCCEEDED
        if code < 0 and -code in (signal.SIGTERM, signal.SIGINT):
            return JobState.CANCELLED
        if code < 0:
            # Killed by a signal nobody here sent: SIGKILL is what the OOM killer sends.
            handle.info["signal"] = -code
        return JobState.FAILED

    def cancel(self, handle: JobHandle, grace: float = 10.0) -> None:
        pid = int(handle.info.get("pid", handle.job_id.split(":")[0]))
        if handle.info.get("warm"):
            slot = self._slots.get(pid)
            if slot is not None:
                slot.drain()
                if handle.run_id in slot.done or slot.current != handle.run_id:
                    return  # that job is over; the slot may already be serving another one
                self._slots.pop(pid)
                self._stop(slot.proc, slot.container, grace)
                self._cancelled.add(handle.job_id)
                return
        proc = self._procs.get(str(pid))
        if proc is not None:
            self._stop(proc, self._names.get(str(pid)), grace)
            return
        if self.container is not None and handle.info.get("container"):
            self.container.stop(handle.info["container"], grace)
            return
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)

    def _stop(self, proc: subprocess.Popen, name: str | None, grace: float) -> None:
        """Stop a job's process; in container mode through the runtime (SIGTERM to the job, not
        to the `run` client, which would leave the container running if it were killed)."""
        if self.container is not None and name and proc.poll() is None:
            self.container.stop(name, grace)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace + 30)
        _kill_group(proc, grace)

    def close(self, grace: float = 5.0) -> None:
        """End the warm slots: stdin closes, so a busy one finishes its job first; an idle one
        (no job: maybe still importing) is waited for and, after `grace` seconds, killed, so
        that no `lfads serve` process outlives the controller."""
        idle = []
        for slot in self._slots.values():
            slot.drain()
            if slot.proc.stdin and not slot.proc.stdin.closed:
                with contextlib.suppress(OSError):
                    slot.proc.stdin.close()
            if slot.current is None:
                idle.append(slot)
        for slot in idle:
            try:
                slot.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _kill_group(slot.proc, grace)
        self._slots.clear()

    # ------------------------------------------------------------------ warm slots

    def _submit_warm(self, spec: JobSpec) -> JobHandle:
        run_id = spec.run_id
        slot = self._idle_slot(spec)
        slot.current = run_id
        assert slot.proc.stdin is not None
        slot.proc.stdin.write(f"{run_id} {spec.tracking_uri}\n".encode())
        slot.proc.stdin.flush()
        pid = slot.proc.pid
        return JobHandle(self.name, f"{pid}:{run_id}", run_id, {"pid": pid, "warm": True})

    def _idle_slot(self, spec: JobSpec) -> _Slot:
        mounts = _mount_key(spec) if self.container is not None else None
        for pid, slot in list(self._slots.items()):
            slot.drain()
            if slot.proc.poll() is not None:
                self._slots.pop(pid)
            elif slot.current is None and (slot.threads, slot.mounts) == (spec.threads, mounts):
                return slot
        return self._spawn_slot(spec.threads, spec.log_dir, spec)

    def prestart(self, jobs: int, threads: int | None = None, log_dir: str | None = None) -> None:
        """Start warm slots before the first jobs, so their imports overlap the caller's setup.
        Not in container mode: a container's mounts come from the first job's spec."""
        if self.warm and self.container is None:
            while len(self._slots) < jobs:
                self._spawn_slot(threads, log_dir)

    def _spawn_slot(self, threads: int | None, log_dir: str | None, job: Any = None) -> _Slot:
        log = self._log_file(log_dir, f"warm-{len(self._slots)}-{os.getpid()}")
        command, name, mounts = [self.python, "-m", "lfads_lightning", "serve"], None, None
        if self.container is not None and job is not None:
            name = container_name("slot", f"-{os.getpid()}-{next(self._serial)}")
            mounts = _mount_key(job)
            command = [*self.container.run_command(job, name, interactive=True), "serve"]
        proc = subprocess.Popen(
            command,
            env=_env(threads),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log if log else None,
            start_new_session=True,
        )
        if log is not None:
            log.close()
        slot = _Slot(proc, threads, name, mounts)
        slot.start_reader()
        self._slots[proc.pid] = slot
        return slot


def _mount_key(spec: JobSpec) -> tuple:
    return (spec.tracking_uri, tuple(sorted(spec.paths.items())))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
