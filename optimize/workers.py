"""Studies that survive: failed trials, crashed workers and several workers on one study.

* :func:`guard_objective` wraps a study's Optuna objective: it records which worker runs the
  trial (system attribute ``fabric_opt_worker``: host and pid) and, when the trial raises, stores
  the reason as the user attribute ``error`` (one line, ``"Type: message"``) and the system
  attribute ``fail_reason``. Together with ``catch=CATCH`` in ``study.optimize`` a trial that
  raises (a prompt that fails, an out-of-memory the generator could not absorb, a full disk while
  writing an image, a NaN reward) becomes a ``FAIL`` trial and the study goes on. Interrupts
  (``KeyboardInterrupt``, ``SystemExit``) are not caught.
* :func:`recover_dead_trials` is for storages without heartbeats (the journal file): trials left
  ``RUNNING`` by a worker of this host whose process is gone are failed, their MLflow trial run is
  marked ``KILLED``, and their parameters are enqueued again.
* :func:`requeue_stale_trial` is the RDB storages' heartbeat callback (Optuna's own
  ``RetryFailedTrialCallback`` is deprecated): a trial failed by heartbeat timeout is enqueued again.
* :class:`BudgetGuard` stops a worker from starting a trial when the trials already finished or
  running elsewhere fill the study's budget.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

__all__ = [
    "finished_states",
    "budget_trials",
    "died_with_worker",
    "CATCH",
    "ERROR_ATTR",
    "FAIL_REASON_ATTR",
    "RETRY_OF_ATTR",
    "WORKER_ATTR",
    "BudgetGuard",
    "error_line",
    "guard_objective",
    "pid_alive",
    "recover_dead_trials",
    "requeue_stale_trial",
    "worker_identity",
]


def finished_states() -> tuple:
    """Trial states of a finished trial: complete, pruned and failed."""
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


logger = logging.getLogger(__name__)

# Exception, not BaseException: KeyboardInterrupt and SystemExit must stop the worker.
CATCH: tuple[type[Exception], ...] = (Exception,)
ERROR_ATTR = "error"
FAIL_REASON_ATTR = "fail_reason"
WORKER_ATTR = "fabric_opt_worker"
RETRY_OF_ATTR = "retry_of"
_MAX_ERROR = 300
_DIED = "WorkerDied"  # the start of the reason recover_dead_trials records


def worker_identity() -> dict[str, Any]:
    """This process as recorded on the trials it runs: ``{"host": ..., "pid": ...}``."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def error_line(exc: BaseException) -> str:
    """``"Type: first line of the message"``, at most 300 characters."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    line = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return line[:_MAX_ERROR]


def guard_objective(objective: Callable[[optuna.Trial], Any]) -> Callable[[optuna.Trial], Any]:
    """Wrap an Optuna objective to record the worker and the reason of a failure (module docs)."""
    import optuna

    def guarded(trial: optuna.Trial) -> Any:
        trial.storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, worker_identity())
        try:
            return objective(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            reason = error_line(exc)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                logger.error("trial %d: the disk is full (%s); free space, the study goes on", trial.number, reason)
            else:
                logger.warning("trial %d failed: %s", trial.number, reason)
            try:
                trial.set_user_attr(ERROR_ATTR, reason)
                trial.storage.set_trial_system_attr(trial._trial_id, FAIL_REASON_ATTR, reason)
            except Exception as store_exc:  # noqa: BLE001 - the trial fails either way
                logger.warning("trial %d: could not store its failure reason (%s)", trial.number, error_line(store_exc))
            raise

    guarded.__wrapped__ = objective  # type: ignore[attr-defined]
    return guarded


def died_with_worker(trial: optuna.trial.FrozenTrial, retried: set[int]) -> bool:
    """Whether a failed trial failed because its worker died (killed, crashed machine, lost
    heartbeat) rather than by itself: :func:`recover_dead_trials` says so in its reason, and a
    trial whose parameters were enqueued again (``retry_of``; heartbeat failures too) is in ``retried``."""
    from optuna.trial import TrialState

    if trial.state != TrialState.FAIL:
        return False
    reason = str(trial.system_attrs.get(FAIL_REASON_ATTR) or trial.user_attrs.get(ERROR_ATTR) or "")
    return reason.startswith(_DIED) or trial.number in retried


def budget_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that count against a study's budget: complete, pruned, and failed by themselves
    (an exception, a NaN reward). A trial that died with its worker is retried (or was never
    measured) and does not count: a user who asks for 40 trials gets 40 that ran to the end."""
    trials = study.get_trials(deepcopy=False, states=finished_states())
    retried = {t.user_attrs[RETRY_OF_ATTR] for t in study.get_trials(deepcopy=False) if RETRY_OF_ATTR in t.user_attrs}
    return [t for t in trials if not died_with_worker(t, retried)]


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (zombies count as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:  # a killed child not yet reaped by its parent is a zombie: gone for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    if not trial.params:
        return
    study.enqueue_trial(dict(trial.params), user_attrs={RETRY_OF_ATTR: trial.number}, skip_if_exists=False)


def recover_dead_trials(study: optuna.Study, tracker: Any = None) -> list[int]:
    """Fail the ``RUNNING`` trials whose worker (on this host) is no longer alive.

    Each one gets ``error``/``fail_reason`` set, its MLflow trial run (user attribute
    ``mlflow_run_id`` of :mod:`optimize.tracking`) marked ``KILLED`` when ``tracker`` can reach
    MLflow, and its parameters enqueued again. Trials of other hosts are left alone: on several
    machines use an RDB storage, whose heartbeats do this.

    Returns:
        the numbers of the trials that were failed.
    """
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    recovered: list[int] = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = trial.system_attrs.get(WORKER_ATTR)
        if not isinstance(who, dict) or who.get("host") != host or pid_alive(int(who.get("pid", -1))):
            continue
        reason = f"{_DIED}: worker pid {who.get('pid')} on {host} ended during the trial"
        storage = study._storage
        try:  # the reason first: a finished trial cannot be updated
            storage.set_trial_user_attr(trial._trial_id, ERROR_ATTR, reason)
            storage.set_trial_system_attr(trial._trial_id, FAIL_REASON_ATTR, reason)
            if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker got there first
            continue
        _kill_run(tracker, trial)
        _requeue(study, trial)
        recovered.append(trial.number)
        logger.warning(
            "trial %d was left running by a dead worker (pid %s); failed it and enqueued its parameters again",
            trial.number,
            who.get("pid"),
        )
    return recovered


def _kill_run(tracker: Any, trial: optuna.trial.FrozenTrial) -> None:
    from optimize.tracking import TRIAL_RUN_ATTR

    run_id = trial.user_attrs.get(TRIAL_RUN_ATTR)
    if run_id is None or tracker is None or not getattr(tracker, "enabled", False) or not hasattr(tracker, "client"):
        return
    try:
        tracker.client.set_tag(run_id, "state", "FAIL")
        tracker.client.set_terminated(run_id, status="KILLED")
    except Exception as exc:  # noqa: BLE001 - tracking never stops a study
        logger.warning("could not mark MLflow run %s of trial %d KILLED: %s", run_id, trial.number, error_line(exc))


def requeue_stale_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """RDB heartbeat callback: a trial whose worker stopped beating is enqueued again."""
    _requeue(study, trial)
    logger.warning("trial %d lost its worker (heartbeat timeout); enqueued its parameters again", trial.number)


class BudgetGuard:
    """Keep a study at exactly its budget of finished trials when several workers share it.

    ``MaxTrialsCallback`` counts finished trials after a trial ends, so with several workers each
    starts one more trial while the others' last trials run. The guard decides *before* Optuna
    asks for a trial: under a lock file, it starts one only if finished + running trials are below
    the budget, and holds the lock until the new trial is ``RUNNING`` (released by the objective
    that :meth:`wrap` returns). The lock is a host-local file (``flock``), so the budget is exact
    for the workers of one machine; workers on different machines (an RDB storage) can overshoot
    by trials started in the same instant.

    Use::

        guard = BudgetGuard(study, budget, to_run, lock_path)
        objective = guard.wrap(objective)
        if guard.claim():
            study.optimize(objective, n_trials=to_run, callbacks=[guard], catch=CATCH)

    Args:
        study: the study.
        budget: its total number of finished trials.
        to_run: ``n_trials`` given to ``study.optimize`` by this worker.
        lock_path: the lock file (default: one per study and storage in the temp folder).
    """

    def __init__(
        self, study: optuna.Study, budget: int, to_run: int, lock_path: str | os.PathLike | None = None
    ) -> None:
        self.study, self.budget, self.to_run = study, budget, to_run
        self.lock_path = str(lock_path) if lock_path is not None else _default_lock_path(study)
        self._fd: int | None = None
        self._ran = 0

    def wrap(self, objective: Callable[[optuna.Trial], Any]) -> Callable[[optuna.Trial], Any]:
        """:func:`guard_objective` that first releases the lock taken for this trial."""
        guarded = guard_objective(objective)

        def run(trial: optuna.Trial) -> Any:
            self._release()
            return guarded(trial)

        return run

    def claim(self) -> bool:
        """Take the lock if the budget has room for one more trial (then keep it until it runs)."""
        from optuna.trial import TrialState

        self._acquire()
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if len(budget_trials(self.study)) + len(running) < self.budget:
            return True
        self._release()
        return False

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._ran += 1
        if self._ran >= self.to_run:  # Optuna's loop ends by itself: no next trial to claim
            return
        if not self.claim():
            study.stop()

    def spent(self) -> bool:
        """Whether the trials that count (:func:`budget_trials`) fill the budget."""
        return len(budget_trials(self.study)) >= self.budget

    def _acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no flock (Windows): MaxTrialsCallback alone
            return
        if self._fd is None:
            self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def _release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _default_lock_path(study: optuna.Study) -> str:
    import hashlib
    import tempfile

    from optuna.storages import JournalStorage

    storage = study._storage
    backend = getattr(storage, "_backend", None)
    journal = getattr(backend, "_file_path", None) if isinstance(storage, JournalStorage) else None
    if journal:
        return f"{journal}.{hashlib.sha1(study.study_name.encode()).hexdigest()[:12]}.budget-lock"
    rdb = getattr(storage, "_backend", storage)  # Optuna wraps RDBStorage in a cache
    where = getattr(getattr(rdb, "engine", None), "url", None)
    where = where.render_as_string(hide_password=True) if where is not None else repr(storage)
    key = hashlib.sha1(f"{where}|{study.study_name}".encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"fabric-opt-{key}.budget-lock")
