"""Study definitions: complete, documented experiments as YAML files, and prompt sets.

    import studies

    studies.available_studies()            # ['hps', 'pickscore', 'pickscore-diversity', 'target', 'tiny']
    config = studies.load_study_config("tiny", overrides={"trials": 4})
    config.protocol.prompts                # the train prompts, read and validated
    studies.load_prompts("../shared/data/hps_test_prompts.txt").prompts[:3]

A :class:`StudyConfig` is frozen and validated on construction; `optimize.study` runs it.
Importing this package loads neither torch nor optuna.
"""

from __future__ import annotations

from studies.config import (
    PRUNERS,
    STUDIES_DIR,
    StudyConfig,
    available_studies,
    load_study_config,
    merge_study_data,
    read_study_data,
    resolve_study,
    study_file,
)
from studies.prompts import PROMPTS_DIR, PromptSet, builtin_prompt_lists, load_prompts

__all__ = [
    "StudyConfig",
    "PromptSet",
    "PRUNERS",
    "STUDIES_DIR",
    "PROMPTS_DIR",
    "available_studies",
    "builtin_prompt_lists",
    "load_prompts",
    "load_study_config",
    "merge_study_data",
    "read_study_data",
    "resolve_study",
    "study_file",
]
