"""Studies that survive: faults inside trials, a worker killed mid-trial, several workers.

In-process tests use the solid-colour stand-ins of ``conftest.py`` with injected faults; the
crash test runs ``fabric-opt study`` as a real subprocess on the tiny model and kills it with
SIGKILL while a trial runs.
"""

from __future__ import annotations

import errno
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch

from objectives.base import RewardModel
from optimize.config import load_study_config
from optimize.study import Components, StorageSpec, run_study
from optimize.tracking import NullTracker
from optimize.workers import (
    ERROR_ATTR,
    FAIL_REASON_ATTR,
    WORKER_ATTR,
    budget_trials,
    error_line,
    pid_alive,
    recover_dead_trials,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

ROOT = Path(__file__).resolve().parents[2]
CALLS_PER_TRIAL = 4  # 2 prompts x 2 rounds


def _config(**changes):
    overrides = {
        "prompts": {"train": {"list": ["a", "b"]}, "validation": {"list": ["c"]}},
        "protocol": {"steps": 2, "n_images": 2, "value": "final"},
        "sampler": {"name": "random"},
        "warm_start": [],
        "metrics": [],
        "trials": 3,
    }
    overrides.update(changes)
    return load_study_config("tiny", overrides)


def _faulty_generator(standins, fault: BaseException, at_call: int):
    """A stand-in generator that raises ``fault`` on its ``at_call``-th call (0-based)."""

    class Faulty(standins.ColourGenerator):
        def generate(self, prompt, *args, **kwargs):
            if len(self.calls) == at_call:
                self.calls.append({"fault": True})
                raise fault
            return super().generate(prompt, *args, **kwargs)

    return Faulty()


class _FaultyObjective(RewardModel):
    """Red channel, but NaN/inf for one trial's rounds."""

    name = "red"

    def __init__(self, standins, bad_calls: range, value: float) -> None:
        self.inner = standins.ChannelObjective(0, "red")
        self.bad_calls, self.value, self.calls = bad_calls, value, 0

    def _score(self, images, prompts):
        self.calls += 1
        if self.calls - 1 in self.bad_calls:
            return torch.full((len(images),), self.value)
        return self.inner.score(images, prompts)


class _FullDiskTracker(NullTracker):
    """Raises ENOSPC when trial 1's first round would be written, like a full disk would."""

    def log_round(self, trial_number, *args, **kwargs):
        if trial_number == 1:
            raise OSError(errno.ENOSPC, "No space left on device", "runs/images/trial-1.png")


def _states(study) -> list[str]:
    return [t.state.name for t in study.trials]


@pytest.mark.parametrize(
    "fault, expected",
    [
        (RuntimeError("prompt 'b' broke the text encoder"), "RuntimeError: prompt 'b' broke the text encoder"),
        (
            torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
            "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        ),
        (ValueError("line one\nline two"), "ValueError: line one"),
    ],
    ids=["exception-in-one-prompt", "cuda-oom", "multi-line-message"],
)
def test_a_trial_that_raises_fails_alone_and_the_study_goes_on(standins, red, fault, expected, tmp_path):
    generator = _faulty_generator(standins, fault, at_call=CALLS_PER_TRIAL + 1)  # trial 1, prompt 'b'
    out = run_study(
        _config(),
        storage=tmp_path / "s.journal",
        runs_dir=tmp_path,
        components=Components(generator, red),
        export=False,
    )
    assert _states(out.study) == ["COMPLETE", "FAIL", "COMPLETE"]
    failed = out.study.trials[1]
    assert failed.user_attrs[ERROR_ATTR] == expected and failed.system_attrs[FAIL_REASON_ATTR] == expected
    assert failed.system_attrs[WORKER_ATTR] == {"host": os.uname().nodename, "pid": os.getpid()}
    assert out.new_trials == (0, 1, 2)
    assert len(budget_trials(out.study)) == 3  # a trial that failed by itself counts against the budget


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_rewards_fail_the_trial_and_never_reach_the_gp(standins, value, tmp_path):
    from optimize.samplers.botorch import BoTorchSampler

    objective = _FaultyObjective(standins, range(CALLS_PER_TRIAL, CALLS_PER_TRIAL + 1), value)  # trial 1, first round
    out = run_study(
        _config(),
        storage=tmp_path / "s.journal",
        runs_dir=tmp_path,
        components=Components(standins.ColourGenerator(), objective),
        export=False,
    )
    assert _states(out.study) == ["COMPLETE", "FAIL", "COMPLETE"]
    assert "NonFiniteScoreError" in out.study.trials[1].user_attrs[ERROR_ATTR]
    # what the GP would be fitted on for a next trial: the two complete trials only, all finite
    config = out.config
    sampler = BoTorchSampler(search_space=config.space.distributions(), seed=0)
    nxt = out.study.ask()
    history = sampler._collect(out.study, out.study._storage.get_trial(nxt._trial_id), config.space.distributions())
    assert len(history.observed) == 2 and all(math.isfinite(v) for row in history.values for v in row)
    assert history.pending == [] and len(history.failed) == 1  # the failed trial: avoided, never observed
    assert history.observed[0] == {k: out.study.trials[0].params[k] for k in config.space.distributions()}


def test_a_full_disk_while_writing_images_fails_the_trial_not_the_study(standins, red, tmp_path):
    out = run_study(
        _config(),
        storage=tmp_path / "s.journal",
        tracker=_FullDiskTracker(),
        runs_dir=tmp_path,
        components=Components(standins.ColourGenerator(), red),
        export=False,
    )
    assert _states(out.study) == ["COMPLETE", "FAIL", "COMPLETE"]
    assert out.study.trials[1].user_attrs[ERROR_ATTR].startswith("OSError: [Errno 28] No space left on device")


def test_keyboard_interrupt_stops_the_study(standins, red, tmp_path):
    generator = _faulty_generator(standins, KeyboardInterrupt(), at_call=1)
    with pytest.raises(KeyboardInterrupt):
        run_study(
            _config(),
            storage=tmp_path / "s.journal",
            runs_dir=tmp_path,
            components=Components(generator, red),
            export=False,
        )
    study = optuna.load_study(study_name="tiny", storage=StorageSpec.parse(tmp_path / "s.journal").open())
    assert len(study.trials) == 1  # no next trial was started


def test_failed_trials_of_one_study_with_mlflow_are_closed_failed(standins, red, tmp_path):
    from mlflow import MlflowClient

    from optimize.tracking import MlflowTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    generator = _faulty_generator(standins, RuntimeError("boom"), at_call=CALLS_PER_TRIAL)
    run_study(
        _config(trials=2),
        name="mlf",
        storage=tmp_path / "s.journal",
        tracker=MlflowTracker(uri),
        runs_dir=tmp_path,
        components=Components(generator, red),
        export=False,
    )
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("mlf").experiment_id])
    children = {r.data.tags["trial_number"]: r for r in runs if r.data.tags.get("kind") == "trial"}
    assert children["0"].info.status == "FINISHED" and children["1"].info.status == "FAILED"
    assert children["1"].data.tags["state"] == "FAIL"


def test_error_line_is_one_line():
    assert error_line(RuntimeError("a\nb")) == "RuntimeError: a"
    assert error_line(KeyError()) == "KeyError"
    assert len(error_line(ValueError("x" * 1000))) == 300


def test_pid_alive():
    assert pid_alive(os.getpid())
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not pid_alive(proc.pid) and not pid_alive(0)


def test_recovery_fails_and_requeues_only_dead_workers_trials(tmp_path):
    storage = StorageSpec.parse(tmp_path / "s.journal").open()
    study = optuna.create_study(study_name="r", storage=storage)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = os.uname().nodename
    owners = [
        {"host": host, "pid": dead.pid},
        {"host": host, "pid": os.getpid()},
        {"host": "elsewhere", "pid": dead.pid},
    ]
    for who in owners:
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, who)
    assert recover_dead_trials(study) == [0]
    assert _states(study) == ["FAIL", "RUNNING", "RUNNING", "WAITING"]
    assert study.trials[0].user_attrs[ERROR_ATTR].startswith("WorkerDied")
    assert (
        study.trials[3].system_attrs["fixed_params"] == study.trials[0].params
        and study.trials[3].user_attrs["retry_of"] == 0
    )
    assert recover_dead_trials(study) == []  # idempotent


# ---- a real worker killed mid-trial ---------------------------------------------------------

STUDY_YAML = """\
extends: tiny
name: crash
prompts:
  train: {list: ["a red circle on a blue background"]}
  validation: {list: ["a green circle"]}
protocol: {steps: 2, rounds: 1, n_images: 1, value: final}
metrics: []
sampler: random
warm_start: []
compare_with: []
trials: 3
"""


def _cli(workdir: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fabric_opt_cli.app",
        *args,
        "--runs-dir",
        str(workdir / "runs"),
        "--tracking-uri",
        "none",
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_kill_9_mid_trial_then_resume_loses_nothing(tmp_path):
    # two rounds: the first (no feedback) can come from the plain-call cache in no time, the
    # second (with feedback) is always generated, so the kill lands inside the second trial
    (tmp_path / "study.yaml").write_text(STUDY_YAML.replace("rounds: 1, n_images: 1", "rounds: 2, n_images: 2"))
    journal = tmp_path / "runs" / "optuna.journal"
    argv = _cli(tmp_path, "study", "--study", str(tmp_path / "study.yaml"))
    proc = subprocess.Popen(argv, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    running = None
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.is_file():
                study = optuna.load_study(study_name="crash", storage=StorageSpec.parse(journal).open())
                complete = [t for t in study.trials if t.state.name == "COMPLETE"]
                running = [t for t in study.trials if t.state.name == "RUNNING"]
                # kill during the second trial, once it is generating: one result must survive
                if complete and running and len(running[0].params) == len(complete[0].params):
                    break
            time.sleep(0.05)
        assert running, f"no trial ran in time: {proc.stderr.read().decode()[-500:] if proc.poll() is not None else ''}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed = running[0].number
    before = {t.number: t.values for t in study.trials if t.state.name == "COMPLETE"}

    again = subprocess.run(argv, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-1000:]
    study = optuna.load_study(study_name="crash", storage=StorageSpec.parse(journal).open())
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    states = {t.number: t.state.name for t in study.trials}
    assert states[killed] == "FAIL" and "WorkerDied" in study.trials[killed].user_attrs[ERROR_ATTR]
    assert all(study.trials[n].values == v for n, v in before.items())  # no completed trial lost
    # the killed trial died with its worker: it is retried and does not count against the budget,
    # so the resumed study, asked for the same 3 trials, ends with 3 complete ones
    assert "RUNNING" not in states.values()
    assert [s for s in states.values() if s == "FAIL"] == ["FAIL"]
    assert len([s for s in states.values() if s == "COMPLETE"]) == 3
    assert len(budget_trials(study)) == 3 and killed not in {t.number for t in budget_trials(study)}
    retried = [t for t in study.trials if t.user_attrs.get("retry_of") == killed]
    assert retried and retried[0].state.name == "COMPLETE"
    assert retried[0].params == study.trials[killed].params  # the same point is measured again
    assert "1 lost with their worker, retried and not counted" in again.stdout


# ---- several workers on one study -----------------------------------------------------------

WORKERS = 4
BUDGET = 8


def _study(storage: str, name: str):
    return optuna.load_study(study_name=name, storage=StorageSpec.parse(storage).open())


def _run_workers(tmp_path: Path, storage: str) -> list[subprocess.CompletedProcess]:
    """WORKERS ``fabric-opt worker`` processes started together on one new study."""
    from optimize.study import CONFIG_ATTR, FINGERPRINT_ATTR

    (tmp_path / "study.yaml").write_text(
        STUDY_YAML.replace("name: crash", "name: many").replace("trials: 3", f"trials: {BUDGET}")
    )
    # the study as `fabric-opt study` creates it, before its first trial, so that every worker
    # starts from the same point
    config = load_study_config(str(tmp_path / "study.yaml"))
    study = optuna.create_study(study_name="many", storage=StorageSpec.parse(storage).open(), direction="maximize")
    study.set_user_attr(CONFIG_ATTR, config.to_dict())
    study.set_user_attr(FINGERPRINT_ATTR, config.fingerprint())
    procs = [
        subprocess.Popen(
            _cli(tmp_path, "worker", "many", "--storage", storage),
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(WORKERS)
    ]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def _check_shared_budget(done: list[subprocess.CompletedProcess], study) -> None:
    assert [p.returncode for p in done] == [0] * WORKERS, [p.stderr[-500:] for p in done if p.returncode]
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers)) == len({t._trial_id for t in study.trials})
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED", "FAIL")]
    assert [t for t in study.trials if t.state.name == "RUNNING"] == []
    assert len(finished) == BUDGET, [t.state.name for t in study.trials]
    assert all(t.state.name == "COMPLETE" for t in finished)
    # how the trials spread over the workers depends on which loads its models first (on a loaded
    # 2-core machine one may run them all); every trial must name a worker that took part
    pids = {t.system_attrs["fabric_opt_worker"]["pid"] for t in finished}
    assert 1 <= len(pids) <= WORKERS


@pytest.mark.slow
def test_four_workers_share_a_journal_study(tmp_path):
    journal = str(tmp_path / "runs" / "optuna.journal")
    done = _run_workers(tmp_path, journal)
    _check_shared_budget(done, _study(journal, "many"))


@pytest.mark.slow
def test_four_workers_share_a_postgresql_study(tmp_path):
    import shutil
    import tempfile

    from servers import start_postgres

    pg_root = Path(tempfile.mkdtemp(prefix="fabric-pg-"))  # pytest's tmp folders are private to root;
    pg_root.chmod(0o755)  # the server runs as the postgres user when the tests run as root
    server = start_postgres(pg_root / "pg")
    if isinstance(server, str):
        shutil.rmtree(pg_root, ignore_errors=True)
        pytest.skip(server)
    try:
        done = _run_workers(tmp_path, server.url)
        _check_shared_budget(done, _study(server.url, "many"))
    finally:
        server.stop()
        shutil.rmtree(pg_root, ignore_errors=True)


# ---- the tracking server goes away mid-study ------------------------------------------------


@pytest.mark.slow
def test_tracking_server_stopped_mid_study_warns_once_and_the_study_goes_on(standins, red, tmp_path, monkeypatch):
    import warnings

    # MLflow's HTTP client retries with exponential backoff (minutes) by default; a study should
    # not wait that long for its tracking server (see docs/RELIABILITY.md)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")

    from servers import start_mlflow

    from optimize.study import StudyProgress
    from optimize.tracking import MlflowTracker, TrackingWarning

    server = start_mlflow(tmp_path)
    if isinstance(server, str):
        pytest.skip(server)

    class StopServerAfterFirstTrial(StudyProgress):
        def trial_end(self, trial):
            if trial.number == 0:
                server.stop()

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = run_study(
                _config(),
                storage=tmp_path / "s.journal",
                tracker=MlflowTracker(server.url, health_timeout=2.0),
                runs_dir=tmp_path,
                components=Components(standins.ColourGenerator(), red),
                progress=StopServerAfterFirstTrial(),
                export=False,
            )
    finally:
        server.stop()
    assert len([w for w in caught if issubclass(w.category, TrackingWarning)]) == 1
    assert _states(out.study) == ["COMPLETE", "COMPLETE", "COMPLETE"]  # every trial is in the Optuna storage
    assert out.tracking_failure is not None and out.tracking_uri is None
    assert out.study.trials[0].user_attrs.get("mlflow_run_id")  # trial 0 was tracked before the server went away
