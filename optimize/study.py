"""Create, resume and run studies: a :class:`~optimize.config.StudyConfig` -> Optuna study -> trials ->
tracking, recommendation and presets.

Storage (``storage=``, the CLI's ``--storage``, ``$FABRIC_OPT_STORAGE``):

* a file path (default ``<runs dir>/optuna.journal``): Optuna's
  ``JournalStorage(JournalFileBackend(path))``, an append-only log that several processes on one
  machine (or a shared file system with working locks) can use at the same time;
* an RDB URL (``sqlite:///study.db``, ``postgresql://user@host/db``, ``mysql://...``): Optuna's
  ``RDBStorage`` with heartbeats, so trials of crashed workers are marked failed. PostgreSQL is
  the multi-machine option; SQLite with several workers is not recommended (DESIGN section 9).

Resuming: a study is identified by its name in the storage. Running a study whose name exists
resumes it after checking that everything that changes what a trial measures (model, objectives,
prompts, protocol, search space; :meth:`StudyConfig.fingerprint`) is unchanged. ``trials`` is
the study's **total budget**: a run adds trials until the study has that many *finished*
(complete, pruned or failed) trials, so re-running a finished study does nothing, ``--trials 60``
extends a 40-trial study by 20, and several workers started with the same budget share it.

The resolved config is stored with the study (user attribute ``fabric_opt_config``), so
``report``, ``export`` and extra workers need only the study name and the storage.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fabric.errors import ConfigError, FabricOptError
from optimize.workers import budget_trials

if TYPE_CHECKING:
    import optuna
    import torch

    from fabric.params import FabricParams
    from objectives.base import Objective
    from optimize.config import StudyConfig
    from optimize.protocol import TrialEvaluator
    from optimize.recommend import Recommendation
    from optimize.tracking import Tracker

__all__ = [
    "DEFAULT_RUNS_DIR",
    "JOURNAL_NAME",
    "CONFIG_ATTR",
    "FINGERPRINT_ATTR",
    "RECOMMENDATION_ATTR",
    "StorageSpec",
    "Components",
    "StudyProgress",
    "StudyOutcome",
    "check_objectives",
    "check_resumable",
    "load_components",
    "make_evaluator",
    "make_guard",
    "make_pruner",
    "build_sampler",
    "open_study",
    "run_study",
    "finish_study",
    "export_context",
    "finished_trials",
    "stored_recommendation",
]

logger = logging.getLogger(__name__)

DEFAULT_RUNS_DIR = Path("runs")
JOURNAL_NAME = "optuna.journal"
CONFIG_ATTR = "fabric_opt_config"
FINGERPRINT_ATTR = "fabric_opt_fingerprint"
RECOMMENDATION_ATTR = "fabric_opt_recommendation"
_RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "mssql", "oracle")
_DRIVER_HINTS = {
    "postgresql": "pip install 'fabric-opt[postgres]' (psycopg2-binary)",
    "mysql": "pip install pymysql and use mysql+pymysql://",
}


# ---- storage ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StorageSpec:
    """A validated Optuna storage location (nothing is opened or created by validation).

    Attributes:
        url: the journal file path or the database URL.
        kind: ``"journal"`` or ``"rdb"``.
        path: the journal file or SQLite database file, when there is one.
    """

    url: str
    kind: Literal["journal", "rdb"]
    path: Path | None = None

    @classmethod
    def parse(cls, storage: str | Path | None, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> StorageSpec:
        """Validate a storage location's form (see module docs); ``None`` is the default journal.

        Raises:
            ConfigError: a malformed URL, an unsupported scheme, or a missing database driver.
        """
        if storage is None or str(storage).strip() == "":
            journal = (Path(runs_dir) / JOURNAL_NAME).expanduser().resolve()
            return cls(str(journal), "journal", journal)
        text = str(storage).strip()
        scheme = text.split(":", 1)[0].lower() if ":" in text else ""
        if scheme.split("+", 1)[0] == "sqlite" and not text.startswith(f"{scheme}:///"):
            # sqlite:/x.db, sqlite:x.db, sqlite://x.db: SQLAlchemy wants three slashes before a relative path
            db = text.split(":", 1)[1].lstrip("/") or "study.db"
            raise ConfigError(
                f"storage {text!r}: write SQLite as sqlite:///{db} (relative to the working directory) or "
                f"sqlite:////absolute/{Path(db).name}",
                option="storage",
            )
        if scheme.split("+", 1)[0] == "postgres":
            raise ConfigError(
                f"storage {text!r}: SQLAlchemy names PostgreSQL 'postgresql', not 'postgres'; write "
                f"postgresql{text[len(scheme.split('+', 1)[0]) :]}",
                option="storage",
            )
        if "://" not in text:
            if text.endswith((".db", ".sqlite", ".sqlite3")):
                raise ConfigError(
                    f"storage {text!r} looks like a SQLite file: write sqlite:///{text} (or use a .journal file)"
                )
            path = Path(text).expanduser().resolve()
            if path.is_dir():
                raise ConfigError(f"storage {text!r} is a folder; give a journal file such as {path / JOURNAL_NAME}")
            return cls(str(path), "journal", path)
        scheme = text.split("://", 1)[0].lower()
        if scheme.split("+", 1)[0] not in _RDB_SCHEMES:
            raise ConfigError(
                f"unsupported storage URL scheme {scheme!r}; use a journal file path, sqlite:///..., "
                "postgresql://... or mysql://..."
            )
        try:
            from sqlalchemy.engine import make_url
            from sqlalchemy.exc import ArgumentError, NoSuchModuleError

            url = make_url(text)
            dialect = url.get_dialect()
        except (ArgumentError, ValueError) as exc:
            raise ConfigError(f"storage URL {text!r} is malformed: {exc}") from None
        except NoSuchModuleError:
            raise ConfigError(f"storage URL {text!r}: SQLAlchemy has no driver {scheme!r}") from None
        try:
            dialect.import_dbapi()
        except ImportError as exc:
            hint = _DRIVER_HINTS.get(url.get_backend_name(), f"install the database driver ({exc.name})")
            raise ConfigError(f"storage URL {text!r} needs a database driver that is not installed: {hint}") from None
        database: Path | None = None
        if url.get_backend_name() == "sqlite":
            if not url.database or url.database == ":memory:":
                raise ConfigError(
                    f"storage {text!r}: an in-memory SQLite database cannot hold a study between runs; give a file"
                )
            database = Path(url.database).expanduser().resolve()
            text = f"{scheme}:///{database}"
        return cls(text, "rdb", database)

    def exists(self) -> bool:
        """Whether the storage may hold studies already (files must exist; servers are assumed to)."""
        return self.path.is_file() if self.path is not None else True

    def open(self) -> optuna.storages.BaseStorage:
        """Open (creating the file or tables when missing) the storage.

        Raises:
            ConfigError: the database cannot be reached.
        """
        import optuna

        if self.kind == "journal":
            from optuna.storages.journal import JournalFileBackend

            assert self.path is not None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(self.path)))
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            from optimize.workers import requeue_stale_trial  # reliability: re-run trials of dead workers

            return optuna.storages.RDBStorage(
                self.url, heartbeat_interval=60, grace_period=180, heartbeat_stale_trial_callback=requeue_stale_trial
            )
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many types for "unreachable"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"cannot open storage {self}: {first}") from None

    def __str__(self) -> str:
        return self.url


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that count against the budget (:func:`optimize.workers.budget_trials`): complete,
    pruned, or failed by themselves; a trial whose worker died is retried and does not count."""
    return budget_trials(study)


def open_study(name: str, storage: StorageSpec) -> tuple[optuna.Study, StudyConfig]:
    """Load an existing study and the config stored with it (``report``, ``export``, workers).

    Raises:
        ConfigError: no storage, no study of that name (the message lists the known ones), or a
            study not created by fabric-opt.
    """
    import optuna

    from optimize.config import StudyConfig

    if not storage.exists():
        raise ConfigError(
            f"no study storage at {storage}; create the study first or give the storage it is in", option="storage"
        )
    opened = storage.open()
    names = optuna.get_all_study_names(opened)
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise ConfigError(f"no study named {name!r} in {storage}; studies there: {known}")
    study = optuna.load_study(study_name=name, storage=opened)
    record = study.user_attrs.get(CONFIG_ATTR)
    if not isinstance(record, Mapping):
        raise ConfigError(f"study {name!r} in {storage} was not created by fabric-opt (no stored configuration)")
    try:
        config = StudyConfig.from_dict(record, check_files=False)
    except FabricOptError as exc:
        raise ConfigError(f"the configuration stored with study {name!r} is invalid: {exc}") from None
    return study, config


def check_resumable(config: StudyConfig, name: str, storage: StorageSpec) -> bool:
    """Whether ``name`` already exists in ``storage`` (then it will be resumed).

    Reads only; a missing journal file is not created.

    Raises:
        ConfigError: the stored study measures something else (different fingerprint).
    """
    import optuna

    if not storage.exists():
        return False
    opened = storage.open()
    if name not in optuna.get_all_study_names(opened):
        return False
    study = optuna.load_study(study_name=name, storage=opened)
    stored = study.user_attrs.get(FINGERPRINT_ATTR)
    if stored is None:
        raise ConfigError(
            f"study {name!r} in {storage} was not created by fabric-opt; give another study name to start a new study",
            option="name",
            example="NEW",
        )
    if stored != config.fingerprint():
        from optimize.config import StudyConfig

        differs = "settings"
        record = study.user_attrs.get(CONFIG_ATTR)
        if isinstance(record, Mapping):
            try:
                differs = ", ".join(config.differences(StudyConfig.from_dict(record, check_files=False))) or differs
            except FabricOptError:
                pass
        raise ConfigError(
            f"study {name!r} in {storage} was created with different {differs}; give another study name to start "
            "another study, or the same settings to resume it",
            option="name",
            example="NEW",
        )
    return True


# ---- components -----------------------------------------------------------------------------


def check_objectives(config: StudyConfig, *, model: bool = True) -> None:
    """Fail now if the weights of any objective (scored, the user's, metrics) or the model are missing,
    with all of them in one error (:class:`~fabric.errors.ErrorGroup` when there are several); loads
    nothing.

    Args:
        config: the study.
        model: also check ``config.model`` (off when the caller brings its own generator).
    """
    from fabric.errors import ErrorGroup, ModelLoadError
    from objectives import check_available
    from objectives.composite import parse_spec

    table = config.weights_table
    options = {k: dict(v) for k, v in config.objective_options.items()}
    guard = config.guard.objective if config.guard is not None else None
    specs = [s for s in (config.objective, config.feedback_objective, *config.metrics, guard) if s]
    names = sorted({name for spec in specs for terms in parse_spec(spec) for _, name in terms})
    problems: list[FabricOptError] = []
    for name in names:
        try:
            check_available(name, table, options=options)
        except ModelLoadError as exc:  # WeightsNotFoundError included
            problems.append(exc)
    if model:
        from fabric.models import check_model

        try:
            check_model(config.model)
        except ModelLoadError as exc:
            problems.append(exc)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ErrorGroup(problems)


@dataclass
class Components:
    """The models a study runs: the generator and the loaded objectives.

    Attributes:
        generator: has ``generate(...)`` (a :class:`fabric.FabricGenerator`).
        objective: the scored objective (a multi-objective for Pareto studies).
        feedback_objective: the simulated user's reward model, or ``None`` for the objective.
        metrics: ``name -> objective`` logged per round.
        cache_key: identifies model weights and dtype in the baseline fingerprint.
        guard_objective: the objective of the study's guard, when it has one.
    """

    generator: Any
    objective: Objective
    feedback_objective: Objective | None = None
    metrics: dict[str, Objective] = field(default_factory=dict)
    cache_key: str = ""
    guard_objective: Objective | None = None


def load_components(
    config: StudyConfig,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    *,
    generator: Any = None,
    cache_bytes: int | None = None,
) -> Components:
    """Load the study's generator and objectives (reward models once, shared between roles).

    Args:
        config: the study.
        device: where the generator and the reward models run.
        dtype: the generator's dtype (reward models stay float32).
        generator: an already loaded generator to use instead of ``config.model``.
        cache_bytes: bound of the generator's reference-token cache (default: the generator's,
            1 GiB); trials share it, so a larger one also reuses references across trials.
    """
    import torch

    from objectives import parse_objective

    if generator is None:
        from fabric.fabric_generator import FabricGenerator

        # one first round per prompt: trials whose dropout dropped nothing reuse the baseline's
        n_prompts = len(config.protocol.prompts) + len(config.protocol.validation_prompts)
        kwargs: dict[str, Any] = {} if cache_bytes is None else {"cache_bytes": cache_bytes}
        generator = FabricGenerator.from_pretrained(
            config.model,
            device=device,
            dtype=dtype or torch.float32,
            scheduler=config.scheduler,
            plain_cache_size=max(4, n_prompts),
            **kwargs,
        )
    table = config.weights_table
    options = {k: dict(v) for k, v in config.objective_options.items()}
    objective = parse_objective(config.objective, table, device=device, options=options)
    loaded: dict[str, Objective] = {o.name: o for o in objective.objectives}

    def get(spec: str) -> Objective:
        key = spec.strip()
        if key not in loaded:
            loaded[key] = parse_objective(key, table, device=device, options=options)
        return loaded[key]

    feedback = get(config.feedback_objective) if config.feedback_objective else None
    if config.protocol.feedback == "target":
        user = feedback if feedback is not None else objective.objectives[0]
        if not user.takes_target:
            raise ConfigError(
                "the target-image protocol needs a feedback objective that compares with a target image (e.g. "
                "'target'); "
                f"'{user.name}' does not"
            )
    metrics = {spec: get(spec) for spec in config.metrics}
    guard = get(config.guard.objective) if config.guard is not None else None
    dtype_name = str(dtype or getattr(generator, "dtype", None) or "").removeprefix("torch.")
    cache_key = f"model={config.model}|scheduler={config.scheduler}|dtype={dtype_name}|weights={sorted(table.items())}"
    return Components(generator, objective, feedback, metrics, cache_key, guard)


def make_evaluator(
    config: StudyConfig, components: Components, baseline_cache: str | Path | None = None
) -> TrialEvaluator:
    """The study's :class:`~optimize.protocol.TrialEvaluator`."""
    from optimize.protocol import TrialEvaluator

    return TrialEvaluator(
        components.generator,
        components.objective,
        config.protocol,
        config.space,
        feedback_objective=components.feedback_objective,
        metrics=components.metrics,
        baseline_cache=baseline_cache,
        cache_key=components.cache_key,
        guard=make_guard(config, components),
    )


def make_guard(config: StudyConfig, components: Components) -> Any:
    """The study's :class:`~optimize.protocol.Guard` (``None`` without ``guard:``); a preset
    reference is mapped into the study's space, as the held-out comparison maps it."""
    from optimize.config import NO_FEEDBACK
    from optimize.protocol import Guard
    from optimize.samplers import DEFAULT_PRESETS

    spec = config.guard
    if spec is None:
        return None
    if components.guard_objective is None:
        raise ConfigError(f"study {config.name!r} has a guard but its components have no guard objective")
    space = config.space
    reference = (
        None
        if spec.reference == NO_FEEDBACK
        else space.to_params(space.from_params(DEFAULT_PRESETS[spec.reference], clip=True))
    )
    label = "no feedback" if reference is None else spec.reference
    return Guard(components.guard_objective, reference, label, spec.tolerance, spec.penalty)


def build_sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded by the study seed (raises ConfigError on bad options)."""
    from optimize.samplers import make_sampler

    options = dict(config.sampler_options)
    if config.sampler == "botorch":
        options.setdefault("search_space", config.space.distributions())
    return make_sampler(config.sampler, seed=config.seed, **options)


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    """The configured Optuna pruner (raises ConfigError on bad options)."""
    import optuna

    classes = {
        "none": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "wilcoxon": optuna.pruners.WilcoxonPruner,
    }
    try:
        return classes[config.pruner](**dict(config.pruner_options))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid option for pruner '{config.pruner}': {exc}") from None


# ---- progress -------------------------------------------------------------------------------


class StudyProgress:
    """Receives progress events from :func:`run_study`; this base class ignores them.

    The CLI draws rich progress bars from these; tests and notebooks can pass their own.
    """

    def begin(self, name: str, budget: int, finished: int, to_run: int) -> None:
        """The study is open: ``finished`` of ``budget`` trials are done, ``to_run`` will run now."""

    def baseline(self, n_prompts: int, total_rounds: int) -> None:
        """The no-feedback baseline is being computed (once per study and split; read back from the
        study's cache, it takes no time): ``total_rounds`` rounds of ``n_prompts`` prompts."""

    def baseline_round(self) -> None:
        """A round of the baseline was generated."""

    def trial_start(self, number: int, total_rounds: int) -> None:
        """Trial ``number`` starts; it will generate ``total_rounds`` rounds."""

    def round_done(self, number: int, prompt_index: int, round_index: int) -> None:
        """A round of trial ``number`` was generated and scored."""

    def trial_end(self, trial: optuna.trial.FrozenTrial) -> None:
        """Trial ended (any state)."""

    def finishing(self) -> None:
        """Trials are done; the recommendation, plots and presets are being written."""

    def end(self) -> None:
        """Everything is written."""


@dataclass(frozen=True)
class StudyOutcome:
    """What :func:`run_study` did.

    Attributes:
        study: the Optuna study.
        config: its configuration.
        storage: where it is stored.
        resumed: the study existed before this run.
        new_trials: numbers of the trials this run finished.
        recommendation: the recommended parameters (``None`` without a complete trial).
        presets: exported preset files (``json`` first).
        plots: written plot files.
        tracking_uri: the MLflow tracking URI (``None`` when tracking was off or failed).
        parent_run_id: the study's MLflow study run (the name is historical).
        tracking_url: where the study's runs can be seen (a link for tracking servers).
        tracking_failure: why tracking stopped, if it did.
        run_dir: the study's folder under the runs dir.
        experiment_id: the study's MLflow experiment.
    """

    study: optuna.Study
    config: StudyConfig
    storage: StorageSpec
    resumed: bool
    new_trials: tuple[int, ...]
    recommendation: Recommendation | None
    presets: tuple[Path, ...]
    plots: tuple[Path, ...]
    tracking_uri: str | None
    parent_run_id: str | None
    tracking_url: str | None
    tracking_failure: str | None
    run_dir: Path
    experiment_id: str | None = None


# ---- running --------------------------------------------------------------------------------


def run_study(
    config: StudyConfig,
    *,
    name: str | None = None,
    storage: StorageSpec | str | None = None,
    tracker: Tracker | None = None,
    runs_dir: str | Path = DEFAULT_RUNS_DIR,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    cache_bytes: int | None = None,
    components: Components | None = None,
    progress: StudyProgress | None = None,
    export: bool = True,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> StudyOutcome:
    """Create or resume the study and run it up to its trial budget (see module docs).

    Order matters for bad input: the config, the objectives' weights, the sampler, the pruner and
    the storage are checked, and the models loaded, *before* the Optuna study, the MLflow run or
    any file is created.

    Args:
        config: the study.
        name: the Optuna study / MLflow experiment name (default ``config.name``).
        storage: a :class:`StorageSpec`, a journal path or an RDB URL (default
            ``<runs_dir>/optuna.journal``).
        tracker: where trials are logged (default: none; see :func:`optimize.tracking.make_tracker`).
        runs_dir: the folder for the default journal, the baseline cache, plots and presets.
        device: where the models run.
        dtype: the generator's dtype.
        cache_bytes: bound of the generator's reference-token cache (see :func:`load_components`).
        components: already loaded models (tests, notebooks); ``config.model`` is then not loaded.
        progress: receives progress events.
        export: write the recommendation's presets and the plots at the end.
        sampler: a sampler object to use instead of the configured one (benchmarks that compare
            samplers the registry cannot build); the stored configuration still names
            ``config.sampler``.

    Raises:
        ConfigError: invalid or incompatible settings, missing weights (before anything is created).
    """
    import optuna

    from optimize.samplers import enqueue_defaults
    from optimize.tracking import NullTracker

    name = name or config.name
    if name != config.name:
        config = config.replace(name=name)
    spec = storage if isinstance(storage, StorageSpec) else StorageSpec.parse(storage, runs_dir)
    tracker = tracker if tracker is not None else NullTracker()
    progress = progress or StudyProgress()
    runs_dir = Path(runs_dir)

    # 1. Check everything that can be wrong, before anything is created
    if components is None:
        check_objectives(config)
    sampler = sampler if sampler is not None else build_sampler(config)
    pruner = make_pruner(config)
    resumed = check_resumable(config, name, spec)

    # 2. Models (slow; a failure here still leaves nothing behind)
    if components is None:
        components = load_components(config, device, dtype, cache_bytes=cache_bytes)
    run_dir = runs_dir / name
    evaluator = make_evaluator(config, components)

    # 3. The study, its record and warm starts
    study = optuna.create_study(
        study_name=name,
        storage=spec.open(),
        directions=list(evaluator.directions),
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    if not resumed:
        study.set_user_attr(CONFIG_ATTR, config.to_dict())
        study.set_user_attr(FINGERPRINT_ATTR, config.fingerprint())
        if config.warm_start:
            enqueue_defaults(study, config.space, config.warm_start)
        logger.info("created study %s in %s", name, spec)
    else:
        logger.info("resuming study %s in %s (%d finished trials)", name, spec, len(finished_trials(study)))
    evaluator.baseline_cache = run_dir / "baseline-cache.json"

    # 4. Tracking and the baseline
    tracker.start_study(study, config)
    # reliability (optimize.workers): fail and re-enqueue trials left RUNNING by dead workers of this host
    from optimize.workers import CATCH, BudgetGuard, recover_dead_trials

    recover_dead_trials(study, tracker)
    status = "FINISHED"
    current: dict[str, int] = {}
    new_trials: list[int] = []
    try:
        if config.protocol.value == "improvement":
            progress.baseline(len(config.protocol.prompts), len(config.protocol.prompts) * config.protocol.rounds)
            evaluator.on_progress = progress.baseline_round
            try:
                baseline = evaluator.baseline("train")
            finally:
                evaluator.on_progress = None
            tracker.log_baseline(evaluator.objective_names, baseline)

        finished = len(finished_trials(study))
        to_run = max(0, config.trials - finished)
        progress.begin(name, config.trials, finished, to_run)
        if to_run == 0:
            logger.info(
                "study %s already has %d finished trials (budget %d); raise --trials to run more",
                name,
                finished,
                config.trials,
            )

        guard = BudgetGuard(study, config.trials, to_run)  # reliability: exact budget with several workers
        objective = guard.wrap(_trial_function(evaluator, config, tracker, progress, current))

        def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            current.pop("trial", None)
            new_trials.append(trial.number)
            tracker.end_trial(study, trial)
            progress.trial_end(trial)

        if to_run and guard.claim():
            study.optimize(
                objective,
                n_trials=to_run,
                callbacks=[after_trial, guard, lambda study, trial: study.stop() if guard.spent() else None],
                catch=CATCH,
                gc_after_trial=False,
            )
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        if "trial" in current:
            tracker.fail_trial(current["trial"], "KILLED" if status == "KILLED" else "FAIL")
        if status != "FINISHED":
            tracker.end_study(status)

    cache = getattr(components.generator, "plain_cache", None)
    if cache is not None and cache.hits + cache.misses:
        logger.info(
            "calls without feedback (first rounds, baseline): %d reused, %d generated", cache.hits, cache.misses
        )
    tokens = getattr(components.generator, "state_cache", None)
    if tokens is not None and tokens.hits + tokens.misses:
        logger.info(
            "reference tokens (one reference at one step): %d reused, %d recorded, %d not kept (cache_bytes)",
            tokens.hits,
            tokens.misses,
            tokens.rejected,
            extra={"option": "cache_bytes"},
        )

    # 5. Recommendation, presets, plots
    progress.finishing()
    try:
        recommendation, presets, plots = finish_study(study, config, tracker, run_dir) if export else (None, (), ())
    finally:
        tracker.end_study("FINISHED")  # the trials are done, whatever happens to the presets and plots
    progress.end()
    return StudyOutcome(
        study=study,
        config=config,
        storage=spec,
        resumed=resumed,
        new_trials=tuple(new_trials),
        recommendation=recommendation,
        presets=tuple(presets),
        plots=tuple(plots),
        tracking_uri=tracker.uri if tracker.enabled else None,
        parent_run_id=tracker.parent_run_id if tracker.enabled else None,
        tracking_url=tracker.run_url() if tracker.enabled else None,
        tracking_failure=getattr(tracker, "failure", None),
        run_dir=run_dir,
        experiment_id=tracker.experiment_id if tracker.enabled else None,
    )


def _trial_function(
    evaluator: TrialEvaluator, config: StudyConfig, tracker: Tracker, progress: StudyProgress, current: dict[str, int]
) -> Callable[[optuna.Trial], Any]:
    """The Optuna objective: :meth:`TrialEvaluator.run_trial` with tracking and progress hooks."""
    prompts = config.protocol.prompts
    total_rounds = len(prompts) * config.protocol.rounds

    def start(trial: optuna.Trial, values: dict[str, Any], params: FabricParams) -> None:
        tracker.start_trial(trial, values, params.to_dict())
        progress.trial_start(trial.number, total_rounds)

    def on_round(
        p: int, r: int, images: list, scores: Mapping[str, list[float]], choice: tuple[int, int] | None
    ) -> None:
        tracker.log_round(current["trial"], p, r, images, scores, prompt=prompts[p], choice=choice)
        progress.round_done(current["trial"], p, r)

    def objective(trial: optuna.Trial) -> float | Sequence[float]:
        current["trial"] = trial.number
        return evaluator.run_trial(trial, on_start=start, on_round=on_round)

    return objective


# ---- the end of a run -----------------------------------------------------------------------


def export_context(
    config: StudyConfig,
    *,
    trial: int | None = None,
    estimate: float | None = None,
    prompt: str | None = None,
    liked: Sequence[str] = (),
    disliked: Sequence[str] = (),
    study_name: str | None = None,
) -> Any:
    """The :class:`~optimize.export.ExportContext` of a study's preset (prompt: the first train prompt)."""
    from optimize.export import ExportContext

    p = config.protocol
    source: dict[str, Any] = {"study": study_name or config.name, "objective": config.objective, "model": config.model}
    if trial is not None:
        source["trial"] = trial
    if estimate is not None and math.isfinite(estimate):
        source["estimate"] = estimate
    return ExportContext(
        prompt=prompt if prompt is not None else p.prompts[0],
        negative_prompt=p.negative_prompt,
        seed=p.seed,
        model=config.model,
        scheduler=config.scheduler,
        n_images=p.n_images,
        height=p.height,
        width=p.width,
        liked=tuple(liked),
        disliked=tuple(disliked),
        source=source,
    )


def finish_study(
    study: optuna.Study, config: StudyConfig, tracker: Tracker, run_dir: str | Path
) -> tuple[Recommendation | None, list[Path], list[Path]]:
    """Recommend, export the recommendation in every format, plot, and attach it all to the
    study run. Returns ``(recommendation, preset files, plot files)``."""
    from optimize.export import DEFAULT_EXTENSIONS, available_formats, export_params
    from optimize.recommend import recommend
    from optimize.report import objective_labels, param_importances, save_plots, write_trial_table

    run_dir = Path(run_dir)
    recommendation = None
    try:
        recommendation = recommend(study, config.space, references=None, seed=config.seed)
    except ConfigError as exc:
        logger.warning("no recommendation for study %s: %s", study.study_name, exc)
    presets: list[Path] = []
    if recommendation is not None:
        best = recommendation.best
        context = export_context(config, trial=best.trial_number, estimate=best.estimate, study_name=study.study_name)
        for fmt in sorted(available_formats(), key=lambda f: f != "json"):  # the fabric-opt preset first
            exported = export_params(best.params, fmt, context)
            presets += exported.write(
                run_dir / "presets" / f"{study.study_name}{DEFAULT_EXTENSIONS.get(fmt, '.' + fmt)}"
            )
        tracker.set_parent_tags({"recommended_trial": best.trial_number, "recommendation": recommendation.method})
        study.set_user_attr(
            RECOMMENDATION_ATTR,
            {
                "trial": best.trial_number,
                "estimate": best.estimate if math.isfinite(best.estimate) else None,
                "method": recommendation.method,
                "params": best.params.to_dict(),
                "complete": _complete_numbers(study),
            },
        )
    importances = param_importances(study, seed=config.seed)
    names = objective_labels(config, len(study.directions))
    plots = save_plots(study, run_dir / "plots", importances=importances, recommendation=recommendation, names=names)
    tracker.log_artifacts([write_trial_table(study, names, run_dir / "trials.csv")], "")
    tracker.log_artifacts(plots, "plots")
    tracker.log_artifacts(presets, "presets")
    return recommendation, presets, plots


def _complete_numbers(study: optuna.Study) -> list[int]:
    from optuna.trial import TrialState

    return sorted(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def stored_recommendation(study: optuna.Study) -> tuple[FabricParams, int, float] | None:
    """``(params, trial, estimate)`` the study recorded at its end, while no trial has completed since
    (``fabric-opt export`` then needs no GP fit); ``None`` otherwise."""
    from fabric.params import FabricParams

    record = study.user_attrs.get(RECOMMENDATION_ATTR)
    if not isinstance(record, Mapping) or record.get("complete") != _complete_numbers(study):
        return None
    try:
        params = FabricParams.from_dict(record["params"])
    except (KeyError, FabricOptError):
        return None
    estimate = record.get("estimate")
    return params, int(record["trial"]), float("nan") if estimate is None else float(estimate)
