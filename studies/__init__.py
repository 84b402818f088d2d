"""Study definitions as data: one YAML file per study and prompt lists under ``prompts/``.

Nothing here is code to import: :mod:`optimize.config` reads and validates these files
(``optimize.config.available_studies()``, ``optimize.config.load_study_config("tiny")``) and
:mod:`optimize.prompts` reads the prompt lists. This file only makes the folder a package, so
the files install with the project and are found with ``importlib.resources``.
"""
