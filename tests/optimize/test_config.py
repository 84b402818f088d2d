"""Study definitions: the built-in studies, choosing a study from the command line, extends and
overrides, the stored record and fingerprint, and one-line errors for bad files."""

from __future__ import annotations

import re

import pytest
from PIL import Image

from fabric.errors import ConfigError
from fabric.params import FabricParams
from optimize.config import StudyConfig, available_studies, load_study_config, read_study_data, resolve_study
from optimize.protocol import DEFAULT_NEGATIVE_PROMPT
from optimize.samplers import DEFAULT_SAMPLER

PAPER_NEGATIVE = "lowres, bad anatomy, bad hands, cropped, worst quality"


@pytest.fixture
def pairs(tmp_path):
    for name, colour in (("a.png", "red"), ("b.png", "blue"), ("c.png", "green")):
        Image.new("RGB", (8, 8), colour).save(tmp_path / name)
    (tmp_path / "train.csv").write_text("prompt,image\na red thing,a.png\na blue thing,b.png\n")
    (tmp_path / "heldout.csv").write_text("prompt,image\na green thing,c.png\n")
    return tmp_path


def test_builtin_studies():
    assert available_studies() == [
        "hps",
        "pickscore",
        "pickscore-diversity",
        "target",
        "tiny",
        "toy",
        "toy-demo",
        "toy-no-dropout",
        "toy-noisy",
    ]
    pick = load_study_config("pickscore")
    # the paper's preference-model setting
    assert pick.model == "dreamlike-art/dreamlike-photoreal-2.0" and pick.objective == "pickscore"
    assert (pick.protocol.rounds, pick.protocol.n_images, pick.steps, pick.space.base.guidance_scale) == (3, 4, 20, 6.0)
    assert pick.protocol.negative_prompt == PAPER_NEGATIVE == DEFAULT_NEGATIVE_PROMPT
    assert pick.protocol.feedback == "preference" and pick.metrics == ("diversity",)
    assert len(pick.protocol.prompts) == 16 and len(pick.protocol.validation_prompts) == 8
    assert (
        pick.sampler == DEFAULT_SAMPLER == "gp" and pick.sampler_options == {} and pick.warm_start == ("paper", "a1111")
    )
    assert load_study_config("pickscore-diversity").sampler == "botorch"  # two objectives: qLogNEHVI
    assert load_study_config("hps").objective == "hpsv2"
    pareto = load_study_config("pickscore-diversity")
    assert pareto.multi_objective and pareto.feedback_objective == "pickscore" and not pareto.protocol.prune
    tiny = load_study_config("tiny")
    assert tiny.model == "tiny" and tiny.objective_weights["pickscore"] == "tiny" and tiny.steps == 4
    assert (tiny.protocol.rounds, tiny.protocol.n_images) == (2, 2)


def test_toy_studies_steer_colour_free_prompts_towards_a_taste():
    from toyworld.scenes import COLOURS

    toy, noisy, demo = (load_study_config(n) for n in ("toy", "toy-noisy", "toy-demo"))
    assert (
        toy.model == "toy"
        and toy.objective == "toy-taste"
        and toy.objective_options == {"toy-taste": {"taste": "warm"}}
    )
    prompts = toy.protocol.prompts + toy.protocol.validation_prompts
    assert not set(toy.protocol.prompts) & set(toy.protocol.validation_prompts)
    shapes = [p.split(" on a ")[0].split() for p in prompts]  # backgrounds may be named
    assert not any(c in words for words in shapes for c in COLOURS)  # the shapes' colour is left to feedback
    assert (toy.protocol.temperature, noisy.protocol.temperature) == (0.0, 0.1)
    assert noisy.protocol.prompts == toy.protocol.prompts and noisy.trials == toy.trials
    assert demo.protocol.prompts == toy.protocol.prompts[:2] and len(demo.protocol.validation_prompts) == 4
    assert (demo.protocol.rounds, demo.steps, demo.trials) == (2, 10, 10)
    # the default sampler for the evidence; the 10-trial demo keeps botorch (gp would be all random startup)
    assert (toy.sampler, noisy.sampler, demo.sampler) == (DEFAULT_SAMPLER, DEFAULT_SAMPLER, "botorch")
    no_dropout = load_study_config("toy-no-dropout")
    space = no_dropout.space
    assert "prompt_dropout" not in space.names and space.fixed == {"prompt_dropout": 0.0}
    # the comparison's references are mapped into the space: they lose their dropout too
    assert space.to_params(space.from_params(FabricParams(prompt_dropout=0.3), clip=True)).prompt_dropout == 0.0


def test_target_study_needs_prompt_image_pairs(pairs):
    with pytest.raises(ConfigError, match="no train prompts.*--prompts pairs.csv"):
        load_study_config("target")
    config = load_study_config(
        "target", {"prompts": {"train": str(pairs / "train.csv"), "validation": str(pairs / "heldout.csv")}}
    )
    assert config.protocol.feedback == "target" and config.objective == "target"
    assert config.protocol.targets == (str(pairs / "a.png"), str(pairs / "b.png"))
    assert config.protocol.validation_targets == (str(pairs / "c.png"),)


@pytest.mark.parametrize(
    "objective, study, name",
    [
        ("pickscore", "pickscore", "pickscore"),
        ("hpsv2", "hps", "hps"),
        ("target", None, None),
        ("pickscore,diversity", "pickscore-diversity", "pickscore-diversity"),
        ("aesthetic", "pickscore", "aesthetic"),
        ("pickscore+0.5*aesthetic", "pickscore", "pickscore+0.5-aesthetic"),
    ],
)
def test_objective_alone_picks_a_study(objective, study, name):
    if study is None:  # the target study needs pairs: it was picked, and says so
        with pytest.raises(ConfigError, match="target.yaml: prompts"):
            resolve_study(objective=objective)
        return
    config = resolve_study(objective=objective)
    assert config.name == name and config.objective == objective
    assert config.source.endswith(f"{study}.yaml")


def test_flags_override_the_study_file():
    config = resolve_study(
        "tiny",
        "hpsv2",
        {"model": "other/model", "trials": 3, "sampler": {"name": "tpe"}, "objective_weights": {"hpsv2": "tiny"}},
    )
    assert (config.objective, config.model, config.trials, config.sampler) == ("hpsv2", "other/model", 3, "tpe")
    assert config.sampler_options == {}  # botorch's options do not carry over to another sampler
    assert config.objective_weights == {"pickscore": "tiny", "diversity": "tiny", "hpsv2": "tiny", "target": "tiny"}
    same = resolve_study("tiny", None, {"sampler": {"name": "botorch", "options": {"num_restarts": 2}}})
    assert same.sampler_options == {"n_startup_trials": 4, "num_restarts": 2}
    with pytest.raises(ConfigError, match="give an objective") as error:
        resolve_study()
    assert error.value.option == "study"


def test_extends_merges_and_resolves_paths_per_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mine.txt").write_text("my prompt\n")
    (tmp_path / "sub" / "base.yaml").write_text("extends: tiny\nprompts: {train: mine.txt}\nprotocol: {rounds: 3}\n")
    (tmp_path / "child.yaml").write_text(
        "extends: sub/base.yaml\nprotocol: {n_images: 3}\nsearch_space: "
        "{extends: default, fixed: {prompt_dropout: 0.0}}\n"
    )
    config = load_study_config(tmp_path / "child.yaml")
    assert config.name == "child"  # a derived study is its own study
    assert config.protocol.prompts == ("my prompt",)  # resolved against sub/, where base.yaml lives
    assert (config.protocol.rounds, config.protocol.n_images, config.steps) == (3, 3, 4)
    assert "prompt_dropout" not in config.space.names and config.model == "tiny"
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        read_study_data(tmp_path / "loop.yaml")


def test_record_round_trip_and_fingerprint(pairs):
    config = load_study_config("target", {"prompts": {"train": str(pairs / "train.csv")}})
    again = StudyConfig.from_dict(config.to_dict())
    assert again.replace(source=config.source) == config
    assert again.fingerprint() == config.fingerprint()
    # what a trial measures changes the fingerprint; the budget and the sampler do not
    assert config.replace(trials=99, sampler="tpe").fingerprint() == config.fingerprint()
    # nor how many prompts share a pipeline call: a study may resume with another prompt_batch
    batched = load_study_config(
        "target", {"prompts": {"train": str(pairs / "train.csv")}, "protocol": {"prompt_batch": 4}}
    )
    assert batched.protocol.prompt_batch == 4 and StudyConfig.from_dict(batched.to_dict()).protocol.prompt_batch == 4
    assert batched.fingerprint() == config.fingerprint() and config.differences(batched) == []
    changed = load_study_config("target", {"prompts": {"train": str(pairs / "train.csv")}, "protocol": {"rounds": 2}})
    assert changed.fingerprint() != config.fingerprint() and config.differences(changed) == ["protocol"]
    # a stored record opens without its images (export on another machine)
    (pairs / "a.png").unlink()
    assert StudyConfig.from_dict(config.to_dict(), check_files=False).protocol.targets[0].endswith("a.png")


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: x\nmodel: tiny\nobjective: pickscore\nprompts: {train: tiny\n", r"not valid YAML at line \d+"),
        ("- a list\n", "must be a mapping"),
        ("", "is empty"),
        ("extends: tiny\nprotocl: {}\n", "unknown key.*protocl"),
        ("extends: tiny\nprotocol: {round: 2}\n", "protocol: unknown key.*round"),
        ("extends: tiny\nprotocol: {rounds: 0}\n", "rounds must be a positive integer"),
        ("extends: tiny\nprotocol: {feedback: human}\n", "feedback must be"),
        ("extends: tiny\nsampler: nosuch\n", "unknown sampler 'nosuch'"),
        ("extends: tiny\nsampler: {name: tpe, opts: {}}\n", "sampler must be a name"),
        ("extends: tiny\npruner: hyperband\n", "unknown pruner"),
        ("extends: tiny\nobjective: nosuch\n", "unknown objective 'nosuch'"),
        ("extends: tiny\nfeedback_objective: 'pickscore,diversity'\n", "one objective spec"),
        ("extends: tiny\nscheduler: warp\n", "unknown scheduler 'warp'"),
        ("extends: tiny\ntrials: -1\n", "trials must be a positive integer"),
        ("extends: tiny\nwarm_start: [nosuch]\n", "unknown preset"),
        ("extends: tiny\nsearch_space: {parameters: {nosuch: [0, 1]}}\n", "unknown parameter 'nosuch'"),
        ("extends: tiny\nsearch_space: {parameters: {max_weight: {low: 1, high: 0}}}\n", "must be below high"),
        ("extends: tiny\nobjective_weights: {pickscore: 3}\n", "objective_weights.pickscore"),
        ("extends: nosuch\n", "unknown study 'nosuch'"),
        ("name: has space\nextends: tiny\n", "study name must be"),
        ("model: tiny\nobjective: pickscore\n", "no train prompts"),
    ],
)
def test_bad_study_files_are_one_line_errors_naming_the_file(text, message, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_study_config(path)
    assert re.search(message, str(info.value)), str(info.value)
    assert "\n" not in str(info.value) and "bad.yaml" in str(info.value)


def test_loading_a_study_imports_no_heavy_library():
    import subprocess
    import sys

    code = (
        "import sys, optimize.config; optimize.config.load_study_config('pickscore'); "
        "print(sorted(m for m in ('torch', 'optuna', 'mlflow') if m in sys.modules))"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


def test_a_guard_is_read_validated_and_part_of_the_fingerprint(tmp_path):
    from optimize.config import GuardConfig

    base = load_study_config("tiny")
    assert base.guard is None and base.to_dict()["guard"] is None
    guarded = load_study_config(
        "tiny", {"guard": {"objective": "clipscore", "reference": "paper", "tolerance": 0.5, "penalty": 2}}
    )
    assert guarded.guard == GuardConfig("clipscore", "paper", 0.5, 2.0)
    assert StudyConfig.from_dict(guarded.to_dict()).guard == guarded.guard
    assert guarded.fingerprint() != base.fingerprint() and base.differences(guarded) == ["guard"]
    assert load_study_config("tiny", {"guard": "clipscore"}).guard == GuardConfig("clipscore")
    # a derived study can drop its parent's guard
    path = tmp_path / "child.yaml"
    path.write_text("extends: toy\nname: child\nguard: null\n")
    assert load_study_config(path).guard is None


@pytest.mark.parametrize(
    "guard, message",
    [
        ("'pickscore,diversity'", "one objective spec"),
        ("nosuch", "unknown objective 'nosuch'"),
        ("{objective: clipscore, reference: nosuch}", "guard reference must be no-feedback or a preset"),
        ("{objective: clipscore, penalty: -1}", "penalty must be >= 0"),
        ("{objective: clipscore, tolerance: .nan}", "tolerance must be a finite number"),
        ("{objective: clipscore, strength: 1}", "guard needs 'objective' and takes"),
        ("[clipscore]", "guard must be an objective spec or a mapping"),
    ],
)
def test_bad_guards_are_one_line_errors(guard, message, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(f"extends: tiny\nguard: {guard}\n")
    with pytest.raises(ConfigError) as info:
        load_study_config(path)
    assert re.search(message, str(info.value)), str(info.value)
    assert "\n" not in str(info.value)
    pareto = tmp_path / "pareto.yaml"
    pareto.write_text("extends: tiny\nobjective: pickscore,diversity\nguard: clipscore\n")
    with pytest.raises(ConfigError, match="single objective"):
        load_study_config(pareto)
