"""The registry: names, lazy loading, extension by other modules, option errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import objectives
from fabric.errors import ConfigError, InvalidParameterError
from objectives.base import RewardModel
from objectives.registry import canonical_name, register_objective


def test_builtin_names_are_listed():
    names = objectives.available_objectives()
    assert {"pickscore", "hps", "hpsv2", "hpsv21", "aesthetic", "clipscore", "target", "diversity"} <= set(names)
    assert names == sorted(names)


def test_aliases_and_case_fold():
    assert canonical_name("HPSv2.1") == "hpsv21"
    assert canonical_name(" PickScore ") == "pickscore"
    with pytest.raises(ConfigError, match="unknown objective 'imagereward'; known objectives: "):
        objectives.load_objective("imagereward")


def test_import_is_light():
    code = (
        "import sys, objectives; objectives.available_objectives(); objectives.parse_objective; "
        "print(sorted(m for m in ('torch', 'transformers', 'open_clip', 'PIL') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_other_modules_can_register_objectives(colour_images):
    @register_objective("test-brightness")
    class Brightness(RewardModel):
        uses_prompt = False

        @classmethod
        def load(cls, weights=None, device="cpu", dtype=None, *, gain: float = 1.0):
            objective = cls()
            objective.gain = gain
            return objective

        def _score(self, images, prompts):
            return torch.tensor(
                [self.gain * sum(image.convert("L").getdata()) / image.width / image.height for image in images]
            )

    try:
        assert "test-brightness" in objectives.available_objectives()
        objective = objectives.load_objective("test-brightness", gain=2.0)
        assert objective.name == "test-brightness"
        assert objective.score(colour_images, "").shape == (5,)
        summed = objectives.parse_objective("test-brightness+0.5*clipscore", weights={"clipscore": "tiny"})
        assert summed.terms[0][1].name == "test-brightness"
        with pytest.raises(InvalidParameterError, match="has no option colour; its options: gain"):
            objectives.load_objective("test-brightness", colour=1)
        with pytest.raises(ValueError, match="already registered"):
            register_objective("test-brightness")(lambda **kw: None)
    finally:
        from objectives.registry import _REGISTRY

        _REGISTRY.pop("test-brightness", None)


def test_unknown_options_are_one_line_errors():
    with pytest.raises(
        InvalidParameterError, match="objective 'pickscore' has no option head; its options: batch_size"
    ):
        objectives.load_objective("pickscore", weights="tiny", head="linear")
    with pytest.raises(InvalidParameterError, match="batch_size must be a positive integer"):
        objectives.load_objective("pickscore", weights="tiny", batch_size=0)
    with pytest.raises(InvalidParameterError, match="aesthetic head must be 'mlp' or 'linear'"):
        objectives.load_objective("aesthetic", weights="tiny", head="deep")
