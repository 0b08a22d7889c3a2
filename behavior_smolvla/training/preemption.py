"""Stopping a run on SIGTERM or SIGINT: every rank finishes the same step, rank 0 checkpoints, all exit in time.

A cluster preempts a job by sending SIGTERM to every process of it (SLURM signals the whole job step: the torchrun
agents, the ranks, their DataLoader workers), at slightly different times, and SIGKILL a grace period later; a
terminal's Ctrl-C sends SIGINT to its foreground process group. What this module provides, and the trainer
(``training.loop.Trainer``) uses:

- :class:`StopGuard`, in each rank: a stop signal is recorded, never acted on in the middle of a step. The trainer
  combines the ranks' records in the all-reduce that ends every step, so all ranks stop after the same step, then
  rank 0 writes one checkpoint. A watchdog thread bounds the whole stop: ``timeout_s`` after the signal (or after
  the step at which a rank learnt of another rank's signal) it prints one line and ends the process with
  :data:`STOP_TIMEOUT_EXIT_CODE`, touching no file. It learns of the signal through ``signal.set_wakeup_fd``, whose
  byte the C-level handler writes at once: it runs even while the main thread is blocked in a collective that a
  rank that was not signalled never joins (Python-level handlers only run once the main thread returns to Python).
- DataLoader workers and the forkserver they are forked from ignore those signals (:func:`stop_signals_ignored`,
  :func:`worker_stop_signals`): killed by the cluster's SIGTERM, a worker would take the batches of the step being
  finished with it. A worker still exits when the trainer that owns it terminates it.

Checkpoints are published atomically (``policy.checkpoint``), so ending a process at any moment leaves
``checkpoints/last`` complete.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""The signals that stop a run: SIGTERM (a cluster's preemption notice, ``kill``) and SIGINT (Ctrl-C)."""

STOP_TIMEOUT_EXIT_CODE = 124
"""Exit status of a process that did not stop cleanly within ``--stop-timeout`` (GNU ``timeout``'s code for "timed
out"); a clean stop exits with 0."""

_ARM = b"\0"  # written to the watchdog's socket by StopGuard.arm (no signal has number 0)


class StopGuard:
    """Records SIGTERM / SIGINT while a run trains, and ends the process if stopping takes longer than
    ``timeout_s``.

    Use as a context manager in the main thread, around the training steps. Inside it, SIGTERM and SIGINT no longer
    end the process: :attr:`signum` says one arrived, and the owner decides when to stop (the trainer: after the step
    in progress, on every rank at once). From the first signal, or from :meth:`arm` when the owner learns of a stop
    another way, the process has ``timeout_s`` seconds to exit; past them the watchdog thread writes one line to
    stderr (``label``, the signal, :attr:`phase`, ``on_timeout()``), SIGKILLs this process's multiprocessing children
    (the DataLoader workers) and calls ``os._exit(STOP_TIMEOUT_EXIT_CODE)``.
    Repeated signals change nothing (torchrun forwards SIGTERM to ranks the cluster has already signalled).

    On exit without a stop request the previous handlers are restored. After a stop request SIGTERM and SIGINT stay
    ignored and the deadline stays armed: the process is expected to exit, and must do so in time.

    Args:
        timeout_s: seconds from the stop request to the forced exit (``--stop-timeout``; > 0).
        label: prefix of the line (``"rank 1/2: "`` under DDP).
        on_timeout: called in the watchdog thread for the line's end (what is left on disk); it must not wait on
            anything the main thread may hold.

    Attributes:
        phase: what the owner is doing, for the timeout line (e.g. ``"in step 8 (...)"``); set by the owner.
    """

    def __init__(self, timeout_s: float, label: str = "", on_timeout: Callable[[], str] | None = None) -> None:
        self.timeout_s = float(timeout_s)
        self.label = label
        self.on_timeout = on_timeout
        self.phase = "starting"
        self._signum = 0
        self._deadline: float | None = None
        self._reason = ""
        self._lock = threading.Lock()
        self._previous: dict[int, Any] = {}
        self._old_wakeup_fd = -1
        self._read: socket.socket | None = None
        self._write: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def signum(self) -> int:
        """The first stop signal this process received (``signal.SIGTERM``'s number, ...), 0 for none."""
        return self._signum

    @property
    def stop_requested(self) -> bool:
        """True once a stop signal arrived or :meth:`arm` was called: the deadline runs."""
        return self._deadline is not None

    def __enter__(self) -> StopGuard:
        self._read, self._write = socket.socketpair()
        self._write.setblocking(False)  # set_wakeup_fd needs it: a C signal handler must never block

        def record(signum: int, _frame: Any) -> None:
            # No lock here: this runs in the main thread, which may hold the lock in arm(). The watchdog thread,
            # woken by the same signal's byte, starts the deadline.
            self._signum = self._signum or signum

        self._previous = {sig: signal.signal(sig, record) for sig in STOP_SIGNALS}
        self._old_wakeup_fd = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="stop-watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        signal.set_wakeup_fd(self._old_wakeup_fd)
        if self.stop_requested:
            # The process is on its way out; a late signal (torchrun's forward, a second Ctrl-C) must not turn a
            # clean stop into a death by signal. The watchdog keeps the deadline.
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._write.close()  # the watchdog reads end-of-file and returns
        self._thread.join()
        self._read.close()

    def arm(self, reason: str) -> None:
        """Start the deadline now, unless it runs already: the owner learnt of a stop some other way (another rank's
        signal, through the trainer's all-reduce). ``reason`` names it in the timeout line."""
        self._start_deadline(reason)
        try:
            self._write.send(_ARM)  # wake the watchdog so that it sleeps until the deadline
        except OSError:
            pass  # the buffer is full of signal bytes: the watchdog is awake anyway

    def _start_deadline(self, reason: str) -> None:
        with self._lock:
            if self._deadline is None:
                self._deadline = time.monotonic() + self.timeout_s
                self._reason = reason

    def _watch(self) -> None:
        # Every signal with a Python handler writes its number here (SIGCHLD from DataLoader workers too).
        while not self.stop_requested:
            try:
                data = self._read.recv(512)
            except OSError:
                return
            if not data:
                return  # __exit__ without a stop
            for sig in data:
                if sig in STOP_SIGNALS:
                    self._signum = self._signum or sig
                    self._start_deadline(signal.Signals(sig).name)
        time.sleep(max(0.0, self._deadline - time.monotonic()))
        self._expire()

    def _expire(self) -> None:
        try:
            tail = self.on_timeout() if self.on_timeout is not None else ""
        except Exception as exc:  # noqa: BLE001 (the line and the exit matter more than the note)
            tail = f"(could not say what is on disk: {exc})"
        line = (f"{self.label}no clean stop within --stop-timeout {self.timeout_s:g} s of {self._reason}: still "
                f"{self.phase}; exiting with code {STOP_TIMEOUT_EXIT_CODE}. {tail}".rstrip() + "\n")
        try:
            # os.write, not print: the main thread may hold sys.stderr's lock (blocked in a write to a full pipe).
            os.write(2, line.encode(errors="replace"))
            # The DataLoader workers go too: they obey no one else's SIGTERM, and their forkserver lives as long as
            # one of them does (each holds the server's keep-alive pipe).
            for child in multiprocessing.active_children():
                try:
                    os.kill(child.pid, signal.SIGKILL)
                except OSError:
                    pass
        finally:
            os._exit(STOP_TIMEOUT_EXIT_CODE)


@contextmanager
def stop_signals_ignored() -> Iterator[None]:
    """SIGTERM and SIGINT ignored in this process meanwhile (and its previous handlers restored after).

    A process started meanwhile through fork and exec keeps ignoring them, and so do the processes it forks (an
    ignored signal stays ignored across ``fork`` and ``execve``, signal(7)): start the DataLoader workers' forkserver
    (``data.sampler.worker_context``) inside it, so that a cluster's SIGTERM to every process of the job does not end
    the server, whose workers end when it does. A signal that arrives meanwhile (the milliseconds of starting the
    server) is lost.
    """
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def worker_stop_signals(owner_pid: int, _worker_id: int) -> None:
    """DataLoader ``worker_init_fn`` (bind ``owner_pid`` with ``functools.partial``): the worker ignores SIGINT, and
    SIGTERM unless ``owner_pid`` (the training process, which terminates its workers when it shuts the DataLoader
    down or exits) or the worker's parent sent it.

    torch installs its own SIGTERM handler in every worker, which exits quietly when the worker's parent sent the
    signal and dies otherwise; a cluster's SIGTERM to every process of a job, or torchrun's to a rank's process group,
    would end the workers while their trainer still needs a batch to finish its step. Here SIGTERM is blocked and a
    thread takes it with ``sigwaitinfo``, which tells who sent it. Runs in the worker's main thread, before it starts
    threads of its own (they inherit the blocked signal).
    """
    parent = os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    # Not SIG_IGN: an ignored signal is discarded and never reaches sigwaitinfo; blocked, the default never runs.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def obey_owner() -> None:
        while True:
            info = signal.sigwaitinfo({signal.SIGTERM})
            if info.si_pid in (owner_pid, parent):
                os._exit(0)  # what torch's own worker handler does when its parent terminates it

    threading.Thread(target=obey_owner, name="sigterm-from-owner", daemon=True).start()
