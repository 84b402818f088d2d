"""MLflow tracking of studies (the only module of the project that imports mlflow).

Layout in the tracking store (rounds and prompts count from 1 everywhere: metric steps, grid
titles, artifact names; trial numbers are Optuna's, from 0, as ``--trial`` takes them):

* one **experiment** per study (named after it, tag ``mlflow.experimentKind =
  custom_model_development`` so MLflow 3 treats it as model training, not GenAI). With a SQLite
  store its artifacts live beside the database: ``<db folder>/<db stem>-artifacts/<study>/``
  (:func:`artifact_root`), so two databases never share artifact folders;
* one **study run** (``<study> (study)``, tag ``kind=study``), whose id is kept as the Optuna
  study user attribute ``mlflow_parent_run_id`` (with ``mlflow_tracking_uri``), so a resumed
  study and separate worker processes keep logging to the same run. It holds the study settings
  as params, the no-feedback baseline per round (``baseline/score/<objective>``,
  ``step=round``), each trial's value and the best so far (``trial_value``, ``best_value``,
  ``step=trial``; ``pareto_front_size`` for several objectives) and, as artifacts, the plots,
  presets and report;
* one **trial run** per trial, beside the study run rather than nested under it (MLflow's runs
  table collapses nested runs, so a flat table shows every trial at once, sortable and
  comparable), tags ``kind=trial``, ``fabric_opt.study_run`` (the study run's id), ``study``,
  ``sampler``, ``trial_number``, ``state``; named ``trial-<number>``, with the FABRIC
  parameters and search values as params, the per-round means (``score/<objective>``,
  ``diversity``, ... with ``step=round``), the trial's ``value``, ``mean`` and ``se``, and one
  image grid per prompt per round, ``trial-<n>/prompt-<p>/round-<r>.png``, each image labelled
  with its reward and the simulated user's liked and disliked images framed.

Tracking never stops a study: the first failure (store unreachable, permission, schema) is
reported once as a :class:`TrackingWarning` and tracking is off for the rest of the process;
the trials are in the Optuna storage either way. The client is used with explicit run ids (no
fluent "active run" state), so several trials or processes can log side by side.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fabric.errors import ConfigError

if TYPE_CHECKING:
    import optuna
    from PIL import Image

    from optimize.config import StudyConfig

__all__ = [
    "DEFAULT_TRACKING_URI",
    "PARENT_RUN_ATTR",
    "TRACKING_URI_ATTR",
    "TRIAL_RUN_ATTR",
    "TrackingWarning",
    "Tracker",
    "NullTracker",
    "MlflowTracker",
    "artifact_root",
    "check_tracking_uri",
    "make_tracker",
    "reward_grid",
    "ui_command",
    "ui_url",
    "AppRun",
]

logger = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PARENT_RUN_ATTR = "mlflow_parent_run_id"
STUDY_RUN_TAG = "fabric_opt.study_run"
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
UI_PORT = 5000
TRACKING_URI_ATTR = "mlflow_tracking_uri"
TRIAL_RUN_ATTR = "mlflow_run_id"
_DISABLED = ("", "none", "off", "false", "0")
_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_BAD_KEY = re.compile(r"[^\w./ -]+")
_T = TypeVar("_T")


class TrackingWarning(UserWarning):
    """MLflow logging failed; the study goes on without it."""


def check_tracking_uri(uri: str | None) -> str | None:
    """Validate a tracking URI's form (nothing is contacted or created).

    Args:
        uri: ``sqlite:///path.db`` (relative paths are made absolute), ``http(s)://host:port``,
            ``postgresql://...``/``mysql://...``/``mssql://...``, ``databricks``, or
            ``none``/``off``/empty to disable tracking.

    Returns:
        The normalised URI, or ``None`` when tracking is disabled.

    Raises:
        ConfigError: any other form, e.g. a bare path or ``file:`` (the ``./mlruns`` file store,
            which MLflow 3 refuses by default).
    """
    if uri is None or uri.strip().lower() in _DISABLED:
        return None
    uri = uri.strip()
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    base = scheme.split("+", 1)[0]
    if base == "postgres":
        raise ConfigError(
            f"tracking URI {uri!r}: SQLAlchemy names PostgreSQL 'postgresql', not 'postgres'; write "
            f"postgresql{uri[len(base) :]}",
            option="tracking_uri",
        )
    if base == "sqlite":
        if not uri.startswith(f"{scheme}:///"):
            path = uri.split(":", 1)[1].lstrip("/") or "mlflow.db"
            raise ConfigError(
                f"tracking URI {uri!r}: write SQLite as sqlite:///{path} (relative to the working directory) or "
                f"sqlite:////absolute/{Path(path).name}",
                option="tracking_uri",
            )
        path = uri[len("sqlite:///") :]
        if not path or path == ":memory:":
            raise ConfigError(f"tracking URI {uri!r}: needs a database file, e.g. sqlite:///mlflow.db")
        return f"{scheme}:///{Path(path).expanduser().resolve()}"
    if base in ("http", "https"):
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(uri)
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError as exc:
            raise ConfigError(f"tracking URI {uri!r} is not a valid URL: {exc}") from None
        if not parts.hostname:
            raise ConfigError(f"tracking URI {uri!r} has no host; e.g. http://127.0.0.1:5000")
        return uri.rstrip("/")
    if base in _DB_SCHEMES[1:]:
        if "://" not in uri:
            raise ConfigError(f"tracking URI {uri!r}: a database URL looks like {base}://user@host/db")
        return uri
    if uri == "databricks" or uri.startswith("databricks://"):
        return uri
    if base == "file" or not scheme or len(scheme) == 1:  # len 1: a Windows drive letter
        raise ConfigError(
            f"tracking URI {uri!r}: file stores (./mlruns) are disabled in MLflow 3; use sqlite:///mlflow.db "
            "or an http:// tracking server"
        )
    raise ConfigError(
        f"unsupported tracking URI scheme {scheme!r} in {uri!r}; use sqlite:///..., http(s)://..., a database URL "
        "or 'none'"
    )


def artifact_root(uri: str | None) -> Path | None:
    """Where a tracking store's artifacts go when fabric-opt creates the experiment: beside a SQLite
    database, ``<db folder>/<db stem>-artifacts`` (``runs/mlflow.db`` -> ``runs/mlflow-artifacts``);
    ``None`` for servers and other databases, which decide themselves."""
    checked = check_tracking_uri(uri)
    if checked is None or checked.split(":", 1)[0].split("+", 1)[0] != "sqlite":
        return None
    database = Path(checked.split(":///", 1)[1])
    return database.with_name(f"{database.stem}-artifacts")


def ui_command(uri: str, port: int = UI_PORT) -> str:
    """The command that serves the MLflow UI on a tracking store (a server is opened directly).

    Experiments fabric-opt creates record their artifact folder themselves; for SQLite
    ``--default-artifact-root`` points experiments created in the UI (or by other clients of the
    server) at the same :func:`artifact_root`, instead of ``./mlartifacts`` in the working directory.
    """
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    root = artifact_root(uri)
    flags = f" --default-artifact-root {root}" if root is not None else ""
    return f"mlflow ui --backend-store-uri {uri}{flags} --host 127.0.0.1 --port {port}"


def ui_url(uri: str, experiment_id: str | None = None, port: int = UI_PORT) -> str:
    """The page of a study's experiment in the MLflow UI, opened on its runs table (``workflowType``
    switches MLflow 3's UI from its GenAI pages to model training)."""
    base = uri if uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{port}"
    page = f"/#/experiments/{experiment_id}" if experiment_id else "/#/experiments"
    return f"{base}{page}?workflowType=machine_learning"


def _metric_key(name: str) -> str:
    """``name`` with the characters MLflow rejects in metric and param keys replaced."""
    return _BAD_KEY.sub("_", name)


# ---- grids --------------------------------------------------------------------------------


LIKED_COLOUR = (0, 160, 60)
DISLIKED_COLOUR = (210, 30, 30)
_PAD = 5  # pixels around each image, where liked and disliked images get their frame


def reward_grid(
    images: Sequence[Image.Image],
    scores: Mapping[str, Sequence[float]],
    *,
    title: str | None = None,
    choice: tuple[int, int] | None = None,
) -> Image.Image:
    """The images of one round side by side, each labelled with its reward(s).

    Args:
        images: ``n`` same-sized images.
        scores: ``objective name -> n scores``; one label line per objective.
        title: a line above the grid (e.g. the prompt and round), cut to the grid's width.
        choice: the simulated user's ``(liked, disliked)`` image indices: the liked image gets a
            green frame and a "liked" label, the disliked one a red frame and "disliked".

    Returns:
        An RGB image; cell ``i`` spans ``[i * (w + 2 * pad), (i + 1) * (w + 2 * pad))``
        horizontally, the image inset by ``pad`` (5) pixels.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not images:
        raise ValueError("no images to label")
    w0, h0 = images[0].size
    # Small images (the tiny model's 64x64) are enlarged so a label fits under each.
    scale = max(1.0, 160 / w0)
    w, h = round(w0 * scale), round(h0 * scale)
    size = max(11, min(16, w // 12))
    try:
        font: Any = ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    line = size + 4
    names = list(scores)
    label_h = line * (max(1, len(names)) + (choice is not None)) + 4
    title_h = line + 4 if title else 0
    cell = w + 2 * _PAD
    grid = Image.new("RGB", (cell * len(images), title_h + h + 2 * _PAD + label_h), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((4, 2), _fit(draw, title, font, cell * len(images) - 8), fill="black", font=font)
    marks = {} if choice is None else {choice[0]: ("liked", LIKED_COLOUR), choice[1]: ("disliked", DISLIKED_COLOUR)}
    for i, image in enumerate(images):
        tile = image.convert("RGB")
        if tile.size != (w, h):
            tile = tile.resize((w, h), Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BICUBIC)
        x, y = i * cell, title_h
        grid.paste(tile, (x + _PAD, y + _PAD))
        mark = marks.get(i)
        if mark is not None:
            draw.rectangle((x + 1, y + 1, x + cell - 2, y + h + 2 * _PAD - 2), outline=mark[1], width=_PAD - 1)
        text_y = y + h + 2 * _PAD + 2
        for j, name in enumerate(names):
            text = _fit(draw, f"{name} {scores[name][i]:.3g}", font, w - 6)
            draw.text((x + _PAD + 3, text_y + j * line), text, fill="black", font=font)
        if mark is not None:
            draw.text((x + _PAD + 3, text_y + len(names) * line), mark[0], fill=mark[1], font=font)
    return grid


def _fit(draw: Any, text: str, font: Any, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


# ---- trackers -----------------------------------------------------------------------------


class Tracker:
    """What a study run reports to; this base class records nothing (tracking disabled).

    The study runner calls, in order: :meth:`start_study` once; per trial
    :meth:`start_trial`, :meth:`log_round` after every round, :meth:`end_trial`; then
    :meth:`log_artifacts` and :meth:`end_study`.
    """

    enabled = False
    uri: str | None = None
    parent_run_id: str | None = None
    experiment_id: str | None = None

    def start_study(self, study: optuna.Study, config: StudyConfig) -> None:
        """Open (or reopen) the study's experiment and study run."""

    def log_baseline(self, objective_names: Sequence[str], baseline: Sequence[Sequence[Sequence[float]]]) -> None:
        """The no-feedback baseline, ``[prompt][round][objective]``, as per-round means."""

    def start_trial(self, trial: optuna.Trial, search_values: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        """Open the trial's trial run with its parameters."""

    def log_round(
        self,
        trial_number: int,
        prompt_index: int,
        round_index: int,
        images: Sequence[Image.Image],
        scores: Mapping[str, Sequence[float]],
        prompt: str = "",
        choice: tuple[int, int] | None = None,
    ) -> None:
        """One round's labelled image grid (``prompt_index`` and ``round_index`` from 0, as the
        protocol counts; ``choice`` the user's liked and disliked image)."""

    def end_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """The finished trial's metrics and state; the study run's best-so-far."""

    def fail_trial(self, trial_number: int, state: str = "FAIL") -> None:
        """Close a trial's run when the trial raised past the study (interrupt, error)."""

    def log_artifacts(self, paths: Iterable[str | Path], artifact_path: str) -> None:
        """Files attached to the study run under ``artifact_path``."""

    def attach(self, study: optuna.Study) -> bool | None:
        """Reopen a study's study run for logging (``report``); falsy: it has none here (or
        tracking failed)."""
        return False

    def set_parent_tags(self, tags: Mapping[str, Any]) -> None:
        """Tags on the study run (e.g. the recommended trial)."""

    def end_study(self, status: str = "FINISHED") -> None:
        """Close the study run (``FINISHED``, ``FAILED`` or ``KILLED``)."""

    def run_url(self) -> str | None:
        """Where the study run can be seen, when known."""
        return None


class NullTracker(Tracker):
    """Tracking disabled (``--tracking-uri none``)."""


def _guarded(method: Callable[..., _T]) -> Callable[..., _T | None]:
    """Run a tracking call; on the first failure warn once and switch tracking off."""

    @functools.wraps(method)
    def wrapper(self: MlflowTracker, *args: Any, **kwargs: Any) -> _T | None:
        if not self.enabled:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking must never stop the study
            self._fail(method.__name__, exc)
            return None

    return wrapper


class MlflowTracker(Tracker):
    """Logs a study to an MLflow tracking store (see module docs).

    Args:
        uri: a tracking URI accepted by :func:`check_tracking_uri`.
        health_timeout: seconds to wait for an HTTP server's ``/health`` before tracking is
            switched off (MLflow's own client would retry a dead server for minutes).
    """

    enabled = True

    def __init__(self, uri: str, *, health_timeout: float = 5.0) -> None:
        checked = check_tracking_uri(uri)
        if checked is None:
            raise ConfigError("MlflowTracker needs a tracking URI; use NullTracker to disable tracking")
        self.uri = checked
        self.health_timeout = health_timeout
        self.failure: str | None = None
        self._client: Any = None
        self._study_name = ""
        self._sampler = ""
        self._objective_names: tuple[str, ...] = ()
        self._trial_runs: dict[int, str] = {}

    # ---- failures ------------------------------------------------------------------------
    def _fail(self, where: str, exc: BaseException) -> None:
        self.enabled = False
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        self.failure = f"{type(exc).__name__}: {first[:200]}"
        warnings.warn(
            f"MLflow tracking at {self.uri} failed in {where} ({self.failure}); tracking is off for the rest of "
            "this run and the study goes on (trials stay in the Optuna storage). Check the tracking URI or "
            "server, then resume the study to log new trials",
            TrackingWarning,
            stacklevel=3,
        )

    def _check_server(self) -> None:
        if self.uri is None or not self.uri.startswith(("http://", "https://")):
            return
        import urllib.request

        try:
            with urllib.request.urlopen(self.uri + "/health", timeout=self.health_timeout) as response:
                if response.status != 200:
                    raise ConnectionError(f"/health answered {response.status}")
        except OSError as exc:
            raise ConnectionError(f"no MLflow server answers at {self.uri} ({getattr(exc, 'reason', exc)})") from None

    @property
    def client(self) -> Any:
        if self._client is None:
            import os

            # MLflow's client retries a dead server for minutes per call; a study should warn and go on
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    # ---- study ---------------------------------------------------------------------------
    @_guarded
    def start_study(self, study: optuna.Study, config: StudyConfig) -> None:
        from mlflow.exceptions import MlflowException

        self._check_server()
        self._study_name = study.study_name
        self._sampler = config.sampler
        self._objective_names = _objective_names(config)
        self.experiment_id = self._experiment(study.study_name, config)
        previous_uri = study.user_attrs.get(TRACKING_URI_ATTR)
        run_id = study.user_attrs.get(PARENT_RUN_ATTR)
        if run_id and previous_uri == self.uri:
            try:
                run = self.client.get_run(run_id)
                if run.info.lifecycle_stage == "active":
                    self.client.update_run(run_id, status="RUNNING")
                    self.parent_run_id = run_id
                    self._trial_runs = {}
                    logger.info("resuming MLflow study run %s of study %s", run_id, study.study_name)
                    return
            except MlflowException:
                pass
            logger.warning("the study's MLflow study run %s is gone from %s; starting a new one", run_id, self.uri)
        elif run_id:
            logger.warning(
                "study %s was tracked at %s; logging to %s under a new study run",
                study.study_name,
                previous_uri,
                self.uri,
            )
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{study.study_name} (study)",
            tags={
                "study": study.study_name,
                "sampler": config.sampler,
                "objective": config.objective,
                "model": config.model,
                "kind": "study",
                "mlflow.note.content": _study_note(config),
            },
        )
        self.parent_run_id = run.info.run_id
        self._log_params(self.parent_run_id, _study_params(config))
        study.set_user_attr(PARENT_RUN_ATTR, self.parent_run_id)
        study.set_user_attr(TRACKING_URI_ATTR, self.uri)

    def _experiment(self, name: str, config: StudyConfig) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            root = artifact_root(self.uri)
            return self.client.create_experiment(
                name,
                artifact_location=str(root / name) if root is not None else None,
                tags={
                    "fabric_opt.study": name,
                    "mlflow.note.content": config.description,
                    EXPERIMENT_KIND[0]: EXPERIMENT_KIND[1],
                },
            )
        if experiment.lifecycle_stage == "deleted":
            self.client.restore_experiment(experiment.experiment_id)
        if experiment.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
            self.client.set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
        return experiment.experiment_id

    @_guarded
    def log_baseline(self, objective_names: Sequence[str], baseline: Sequence[Sequence[Sequence[float]]]) -> None:
        from mlflow.entities import Metric

        if not baseline:
            return
        keys = [f"baseline/score/{_metric_key(name)}" for name in objective_names]
        if self.client.get_metric_history(self.parent_run_id, keys[0]):
            return  # a resumed study: the baseline (same seeds) is logged already
        now = _now()
        n_rounds = len(baseline[0])
        metrics = []
        for j in range(len(objective_names)):
            for r in range(n_rounds):
                value = sum(p[r][j] for p in baseline) / len(baseline)
                metrics.append(Metric(keys[j], float(value), now, r + 1))  # rounds from 1
        self.client.log_batch(self.parent_run_id, metrics=metrics, synchronous=True)

    # ---- trials --------------------------------------------------------------------------
    @_guarded
    def start_trial(self, trial: optuna.Trial, search_values: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        tags = {
            STUDY_RUN_TAG: self.parent_run_id,  # not mlflow.parentRunId: MLflow's runs table would fold the trials away
            "kind": "trial",
            "study": self._study_name,
            "sampler": self._sampler,
            "trial_number": str(trial.number),
            "state": "RUNNING",
        }
        warm = trial.user_attrs.get("warm_start") if hasattr(trial, "user_attrs") else None
        if warm:
            tags["warm_start"] = str(warm)
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{trial.number}", tags=tags)
        run_id = run.info.run_id
        self._trial_runs[trial.number] = run_id
        trial.set_user_attr(TRIAL_RUN_ATTR, run_id)
        merged = {**{k: v for k, v in params.items()}, **{f"search/{k}": v for k, v in search_values.items()}}
        self._log_params(run_id, merged)

    @_guarded
    def log_round(
        self,
        trial_number: int,
        prompt_index: int,
        round_index: int,
        images: Sequence[Image.Image],
        scores: Mapping[str, Sequence[float]],
        prompt: str = "",
        choice: tuple[int, int] | None = None,
    ) -> None:
        run_id = self._trial_runs.get(trial_number)
        if run_id is None:
            return
        p, r = prompt_index + 1, round_index + 1  # from 1, for people
        title = f"trial {trial_number}, prompt {p}, round {r}" + (f": {prompt}" if prompt else "")
        grid = reward_grid(images, scores, title=title, choice=choice)
        self.client.log_image(run_id, grid, artifact_file=f"trial-{trial_number}/prompt-{p}/round-{r}.png")

    @_guarded
    def end_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        from mlflow.entities import Metric, RunTag
        from optuna.trial import TrialState

        run_id = self._trial_runs.pop(trial.number, None) or trial.user_attrs.get(TRIAL_RUN_ATTR)
        now = _now()
        metrics: list[Metric] = []
        attrs = trial.user_attrs
        for name, per_round in (attrs.get("round_metrics") or {}).items():
            for r, value in enumerate(per_round, start=1):  # rounds from 1
                if _finite(value):
                    metrics.append(Metric(_metric_key(name), float(value), now, r))
        names = self._objective_names
        values = trial.values or []
        if len(names) == 1:
            if values and _finite(values[0]):
                metrics.append(Metric("value", float(values[0]), now, 0))
            for key in ("mean", "sem"):
                if _finite(attrs.get(key)):
                    metrics.append(Metric("se" if key == "sem" else key, float(attrs[key]), now, 0))
            guard = attrs.get("guard") or {}
            for key in ("unguarded", "floor", "final", "drop", "penalty_applied"):
                if _finite(guard.get(key)):
                    metrics.append(Metric(f"guard_{key}", float(guard[key]), now, 0))
        else:
            for j, name in enumerate(names):
                key = _metric_key(name)
                if j < len(values) and _finite(values[j]):
                    metrics.append(Metric(f"value/{key}", float(values[j]), now, 0))
                for attr, label in (("mean", "mean"), ("sem", "se")):
                    seq = attrs.get(attr)
                    if isinstance(seq, (list, tuple)) and j < len(seq) and _finite(seq[j]):
                        metrics.append(Metric(f"{label}/{key}", float(seq[j]), now, 0))
        if trial.datetime_start and trial.datetime_complete:
            metrics.append(
                Metric("duration_s", (trial.datetime_complete - trial.datetime_start).total_seconds(), now, 0)
            )
        if run_id is not None:
            self.client.log_batch(run_id, metrics=metrics, tags=[RunTag("state", trial.state.name)], synchronous=True)
            status = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "FINISHED", TrialState.FAIL: "FAILED"}.get(
                trial.state, "KILLED"
            )
            self.client.set_terminated(run_id, status=status)
        self._log_progress(study, trial)

    def _log_progress(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        from mlflow.entities import Metric
        from optuna.trial import TrialState

        if trial.state != TrialState.COMPLETE or self.parent_run_id is None:
            return
        now = _now()
        step = trial.number
        metrics = []
        if len(study.directions) == 1:
            metrics.append(Metric("trial_value", float(trial.value or 0.0), now, step))
            metrics.append(Metric("best_value", float(study.best_value), now, step))
        else:
            for j, name in enumerate(self._objective_names):
                metrics.append(Metric(f"trial_value/{_metric_key(name)}", float(trial.values[j]), now, step))
            metrics.append(Metric("pareto_front_size", float(len(study.best_trials)), now, step))
        self.client.log_batch(self.parent_run_id, metrics=metrics, synchronous=True)

    def fail_trial(self, trial_number: int, state: str = "FAIL") -> None:
        """Close a trial's run when the trial raised past the study (interrupt, error)."""
        run_id = self._trial_runs.pop(trial_number, None)
        if run_id is None or not self.enabled:
            return
        try:
            self.client.set_tag(run_id, "state", state)
            self.client.set_terminated(run_id, status="KILLED" if state == "KILLED" else "FAILED")
        except Exception as exc:  # noqa: BLE001
            self._fail("fail_trial", exc)

    # ---- study end -----------------------------------------------------------------------
    @_guarded
    def log_artifacts(self, paths: Iterable[str | Path], artifact_path: str) -> None:
        if self.parent_run_id is None:
            return
        for path in paths:  # artifact_path "" puts the files at the top of the run's artifacts
            self.client.log_artifact(self.parent_run_id, str(path), artifact_path=artifact_path or None)

    @_guarded
    def set_parent_tags(self, tags: Mapping[str, Any]) -> None:
        """Tags on the study run (e.g. the recommended trial)."""
        from mlflow.entities import RunTag

        if self.parent_run_id is not None:
            self.client.log_batch(
                self.parent_run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True
            )

    @_guarded
    def end_study(self, status: str = "FINISHED") -> None:
        if self.parent_run_id is not None:
            self.client.set_terminated(self.parent_run_id, status=status)

    @_guarded
    def attach(self, study: optuna.Study) -> bool:
        """Reopen a study's study run for logging (``report``, ``export``) without a config.

        Returns:
            Whether the study has a study run in this tracking store.
        """
        run_id = study.user_attrs.get(PARENT_RUN_ATTR)
        if not run_id or study.user_attrs.get(TRACKING_URI_ATTR) != self.uri:
            return False
        self._check_server()
        run = self.client.get_run(run_id)
        self.parent_run_id = run_id
        self.experiment_id = run.info.experiment_id
        return True

    def run_url(self) -> str | None:
        if self.parent_run_id is None:
            return None
        if self.uri and self.uri.startswith(("http://", "https://")):
            return ui_url(self.uri, self.experiment_id)
        return f"run {self.parent_run_id} in experiment {self._study_name or self.experiment_id}"

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(_metric_key(str(k))[:250], _param_value(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=items[start : start + 100], synchronous=True)


def make_tracker(uri: str | None) -> Tracker:
    """:class:`MlflowTracker` for a URI, :class:`NullTracker` when tracking is disabled."""
    checked = check_tracking_uri(uri)
    return NullTracker() if checked is None else MlflowTracker(checked)


# ---- helpers ------------------------------------------------------------------------------


def _objective_names(config: StudyConfig) -> tuple[str, ...]:
    from objectives.composite import parse_spec

    names = []
    for terms in parse_spec(config.objective):
        if len(terms) == 1 and terms[0][0] == 1.0:
            names.append(terms[0][1])
        else:
            names.append("+".join(f"{w:g}*{n}" for w, n in terms))
    return tuple(names)


def _study_params(config: StudyConfig) -> dict[str, Any]:
    p = config.protocol
    return {
        "model": config.model,
        "scheduler": config.scheduler or "default",
        "objective": config.objective,
        "feedback_objective": config.feedback_objective or config.objective.split(",")[0],
        "metrics": ",".join(config.metrics) or "none",
        "sampler": config.sampler,
        "pruner": config.pruner,
        "trials": config.trials,
        "seed": p.seed,
        "feedback": p.feedback,
        "rounds": p.rounds,
        "n_images": p.n_images,
        "steps": config.space.base.steps,
        "guidance_scale": config.space.base.guidance_scale,
        "negative_prompt": p.negative_prompt,
        "temperature": p.temperature,
        "value": p.value,
        "n_train_prompts": len(p.prompts),
        "n_validation_prompts": len(p.validation_prompts),
        "search_space": ",".join(config.space.names),
        "guard": _guard_text(config),
    }


def _guard_text(config: StudyConfig) -> str:
    g = config.guard
    if g is None:
        return "none"
    return f"{g.objective} >= {g.reference} - {g.tolerance:g} (penalty {g.penalty:g} per unit below)"


def _study_note(config: StudyConfig) -> str:
    """The study run's description (MLflow shows it on the run page)."""
    p = config.protocol
    return (
        f"{config.description}\n\nObjective {config.objective} on {config.model}; {len(p.prompts)} train prompt(s), "
        f"{p.rounds} rounds x {p.n_images} images, {config.space.base.steps} steps; sampler {config.sampler}, "
        f"{config.trials} trials. Each trial is a run `trial-<n>` in this experiment (tag kind=trial) with its "
        "parameters, per-round scores (step = round, from 1) and one labelled grid per prompt and round "
        "(trial-<n>/prompt-<p>/round-<r>.png; liked image framed green, disliked red). This run holds the baseline, "
        "trial_value/best_value per trial, plots, presets and the report."
    ).strip()


def _param_value(value: Any) -> str:
    text = "None" if value is None else str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _now() -> int:
    return int(time.time() * 1000)


# ---- web app sessions (fabric-opt app) ----------------------------------------------------


class AppRun:
    """One MLflow run of the web app: a session of FABRIC rounds, or a preference tuner.

    Like the study trackers it never stops the app: the first failure warns once (a
    :class:`TrackingWarning`), sets :attr:`failure` (the app shows it) and switches logging off.
    Runs are opened lazily, on the first thing logged. Layout of a rounds session (experiment
    ``fabric-opt-app``, run name ``session-<id>``): ``round-<n>/image-<k>.png`` for every
    generated round, ``round-<n>/marked.png`` (the round's images framed green when liked, red
    when disliked) and ``session.json`` (every round's prompt, parameters, seeds, references and
    marks, plus the event log), rewritten after every change; metrics ``liked`` / ``disliked``
    (references in use, ``step`` = round); tags ``kind``, ``model``, ``prompt``.

    Args:
        uri: a tracking URI (``None``/``"none"``: nothing is logged).
        experiment: the experiment's name.
        run_name: the run's name.
        tags: tags set when the run is created.
        run_id: an existing run to continue (a resumed preference tuner).
    """

    def __init__(
        self,
        uri: str | None,
        experiment: str,
        run_name: str,
        tags: Mapping[str, Any] | None = None,
        run_id: str | None = None,
    ) -> None:
        self.uri = check_tracking_uri(uri)
        self.enabled = self.uri is not None
        self.experiment = experiment
        self.run_name = run_name
        self.tags = {k: str(v) for k, v in (tags or {}).items()}
        self.run_id = run_id
        self.failure: str | None = None
        self._client: Any = None

    def _guard(self, where: str, fn: Callable[[], _T]) -> _T | None:
        if not self.enabled:
            return None
        try:
            if self._client is None:
                import os

                os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
                from mlflow import MlflowClient

                self._client = MlflowClient(tracking_uri=self.uri)
            if self.run_id is None:
                experiment = self._client.get_experiment_by_name(self.experiment)
                if experiment is None:
                    # artifacts beside the database, like a study's, never ./mlruns in the cwd
                    root = artifact_root(self.uri)
                    experiment_id = self._client.create_experiment(
                        self.experiment,
                        artifact_location=str(root / self.experiment) if root is not None else None,
                    )
                else:
                    experiment_id = experiment.experiment_id
                    if experiment.lifecycle_stage == "deleted":
                        self._client.restore_experiment(experiment_id)
                self.run_id = self._client.create_run(experiment_id, run_name=self.run_name, tags=self.tags).info.run_id
            return fn()
        except Exception as exc:  # noqa: BLE001 - logging must never stop the app
            self.enabled = False
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self.failure = f"{type(exc).__name__}: {first[:200]}"
            warnings.warn(
                f"MLflow logging at {self.uri} failed in {where} ({self.failure}); the app goes on without it",
                TrackingWarning,
                stacklevel=3,
            )
            return None

    def ensure_started(self) -> str | None:
        """Create the run now (if logging is on); returns its id."""
        self._guard("start", lambda: None)
        return self.run_id

    def log_images(self, images: Mapping[str, Image.Image]) -> None:
        """Images at artifact paths (``{"round-1/image-0.png": image, ...}``)."""

        def log() -> None:
            for path, image in images.items():
                self._client.log_image(self.run_id, image, artifact_file=path)

        self._guard("log_images", log)

    def log_json(self, path: str, data: Any) -> None:
        """A JSON document at an artifact path (rewritten when logged again)."""
        self._guard("log_json", lambda: self._client.log_dict(self.run_id, data, path))

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = _now()
        items = [Metric(_metric_key(k), float(v), now, step) for k, v in metrics.items() if _finite(v)]
        self._guard("log_metrics", lambda: self._client.log_batch(self.run_id, metrics=items, synchronous=True))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        self._guard("set_tags", lambda: self._client.log_batch(self.run_id, tags=items, synchronous=True))

    def end(self, status: str = "FINISHED") -> None:
        """Close the run (nothing happens when none was opened)."""
        if self.run_id is not None:
            self._guard("end", lambda: self._client.set_terminated(self.run_id, status=status))

    def describe(self) -> str:
        """Where the run is, for the page: ``run <id> in <experiment> at <uri>`` or why there is none."""
        if self.uri is None:
            return "MLflow logging is off (--tracking-uri none)"
        if self.failure:
            return f"MLflow logging is off after an error: {self.failure}"
        if self.run_id is None:
            return f"MLflow: a run in experiment {self.experiment!r} at {self.uri} starts with the first round"
        return f"MLflow run {self.run_id} ({self.run_name}) in experiment {self.experiment!r} at {self.uri}"
