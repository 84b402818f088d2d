"""Prompt sets: curated lists, txt/csv/json loaders, selections, target images, the shared data."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from fabric.errors import ConfigError
from optimize.prompts import PromptSet, builtin_prompt_lists, load_prompts


def test_builtin_lists():
    assert {"curated", "curated-heldout", "tiny", "tiny-heldout", "toy", "toy-heldout"} <= set(builtin_prompt_lists())
    curated, heldout = load_prompts("curated"), load_prompts("curated-heldout")
    assert len(curated) == 16 and len(heldout) == 8
    assert not set(curated.prompts) & set(heldout.prompts)
    assert all(p == p.strip() and p for p in curated.prompts)


def test_txt_one_prompt_per_line_verbatim(tmp_path):
    (tmp_path / "p.txt").write_text("# a prompt may start with a hash\n\n  a cat  \na dog, oil painting\n")
    assert load_prompts("p.txt", base_dir=tmp_path).prompts == (
        "# a prompt may start with a hash",
        "a cat",
        "a dog, oil painting",
    )


def test_csv_columns_and_images(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "fox.png")
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "imgs" / "sea.png")
    (tmp_path / "pairs.csv").write_text('\ufeffImage,Prompt\nfox.png,"a fox, in snow"\nimgs/sea.png,the sea\n')
    pairs = load_prompts("pairs.csv", base_dir=tmp_path, images=True)
    assert pairs.prompts == ("a fox, in snow", "the sea")
    assert pairs.images == (str(tmp_path / "fox.png"), str(tmp_path / "imgs" / "sea.png"))
    # images are optional for preference studies
    assert load_prompts(str(tmp_path / "pairs.csv")).images == ()
    (tmp_path / "captions.csv").write_text("id,caption\n1,a red car\n")
    assert load_prompts("captions.csv", base_dir=tmp_path).prompts == ("a red car",)
    with pytest.raises(ConfigError, match="needs a 'prompt' column.*id, text2"):
        (tmp_path / "bad.csv").write_text("id,text2\n1,x\n")
        load_prompts("bad.csv", base_dir=tmp_path)
    with pytest.raises(ConfigError, match="no prompt column 'nope'"):
        load_prompts({"file": "pairs.csv", "column": "nope"}, base_dir=tmp_path)


def test_json_forms(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "t.png")
    (tmp_path / "a.json").write_text(json.dumps(["one", "two"]))
    (tmp_path / "b.json").write_text(json.dumps({"prompts": [{"prompt": "x", "image": "t.png"}]}))
    assert load_prompts("a.json", base_dir=tmp_path).prompts == ("one", "two")
    b = load_prompts("b.json", base_dir=tmp_path, images=True)
    assert b.prompts == ("x",) and b.images == (str(tmp_path / "t.png"),)
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_prompts("c.json", base_dir=tmp_path)


def test_selection_offset_limit_and_seeded_sample():
    rows = [f"p{i}" for i in range(20)]
    assert load_prompts({"list": rows, "offset": 5, "limit": 3}).prompts == ("p5", "p6", "p7")
    a = load_prompts({"list": rows, "sample": 4, "seed": 1}).prompts
    assert (
        a
        == load_prompts({"list": rows, "sample": 4, "seed": 1}).prompts
        != load_prompts({"list": rows, "sample": 4, "seed": 2}).prompts
    )
    assert list(a) == sorted(a, key=rows.index)  # source order kept
    for bad, message in (
        ({"list": rows, "limit": 0}, "limit must be a positive integer"),
        ({"list": rows, "limit": 2, "sample": 2}, "not both"),
        ({"list": rows, "offset": 20}, "skips all 20"),
        ({"list": rows, "sample": 21}, "cannot sample 21"),
        ({"list": rows, "seed": 3}, "only applies with 'sample'"),
        ({"list": rows, "file": "x.txt"}, "exactly one of"),
        ({"list": rows, "shuffle": True}, "unknown key"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_prompts(bad)


@pytest.mark.parametrize(
    "source, message",
    [
        ("empty.txt", "has no prompts"),
        ("missing.txt", "prompt file not found"),
        ("prompts.yaml", "neither a built-in list"),
        ("nosuchlist", "neither a built-in list"),
        ([], "has no prompts"),
        (["ok", "  "], "entry 1 is an empty prompt"),
        ([1], "entry 0 must be a string"),
        (42, "expected a list name"),
    ],
)
def test_bad_sources_are_one_line_errors(source, message, tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n   \n")
    with pytest.raises(ConfigError, match=message) as info:
        load_prompts(source, base_dir=tmp_path)
    assert "\n" not in str(info.value)


def test_target_images_must_exist_and_be_images(tmp_path):
    (tmp_path / "pairs.csv").write_text("prompt,image\na,missing.png\nb,also-missing.png\n")
    with pytest.raises(ConfigError, match=r"target image not found.*2 of 2 images"):
        load_prompts("pairs.csv", base_dir=tmp_path, images=True)
    (tmp_path / "bad.png").write_text("not an image")
    (tmp_path / "bad.csv").write_text("prompt,image\na,bad.png\n")
    with pytest.raises(ConfigError, match="not a readable image"):
        load_prompts("bad.csv", base_dir=tmp_path, images=True)
    with pytest.raises(ConfigError, match="needs an image for every prompt"):
        load_prompts(["a", "b"], images=True)
    with pytest.raises(ConfigError, match="2 prompts but 1 images"):
        PromptSet(("a", "b"), ("x.png",))


def test_shared_hps_prompts_in_the_papers_format(shared_dir):
    prompts = load_prompts(str(shared_dir / "data" / "hps_test_prompts.txt"))
    assert len(prompts) == 5000 and prompts.prompts[0] == "donald duck chasing to normal ducks on a farm"
    subset = load_prompts({"file": str(shared_dir / "data" / "hps_test_prompts.txt"), "sample": 16, "seed": 0})
    assert len(subset) == 16 and set(subset.prompts) <= set(prompts.prompts)


def test_shared_prompthero_csv(shared_dir, tmp_path):
    path = shared_dir / "data" / "prompthero_prompts.csv"
    prompts = load_prompts(str(path))
    assert len(prompts) == 135 and prompts.prompts[0].startswith("temple in ruines")
    # the images are not distributed: the target protocol says where it looked
    with pytest.raises(ConfigError, match="135 of 135 images.*images_dir"):
        load_prompts({"file": str(path), "images_dir": str(tmp_path)}, images=True)
    Image.new("RGB", (8, 8), "red").save(tmp_path / "0000.jpg")
    first = load_prompts({"file": str(path), "images_dir": str(tmp_path), "limit": 1}, images=True)
    assert first.images == (str(tmp_path / "0000.jpg"),)
