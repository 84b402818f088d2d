"""The offline CLIP tokenizer feeds the models what open_clip's own tokenizer would."""

from __future__ import annotations

import csv

import pytest
import torch

from objectives.clip import EOS_ID, HFClipBackbone, OpenClipBackbone


@pytest.fixture(scope="module")
def prompthero(shared_dir):
    path = shared_dir / "data" / "prompthero_prompts.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with path.open(newline="", encoding="utf-8") as f:
        prompts = [row["prompt"] for row in csv.DictReader(f)]
    assert len(prompts) > 100
    return prompts


def test_ids_equal_open_clip_up_to_and_including_the_end_token(prompthero, tiny):
    import open_clip

    reference = open_clip.tokenize(prompthero)  # (n, 77), zero-padded
    ids, mask = HFClipBackbone.tokenize(tiny("clipscore").backbone, prompthero)
    assert ids.shape == reference.shape == (len(prompthero), 77)
    truncated = 0
    for ours, theirs in zip(ids, reference):
        end = int((theirs == EOS_ID).nonzero()[0])
        assert torch.equal(ours[: end + 1], theirs[: end + 1])
        truncated += end == 76
    assert truncated > 0  # long prompts are cut to 77 tokens with the end token kept, like open_clip


def test_open_clip_backbone_gets_open_clips_exact_ids(prompthero, tiny):
    import open_clip

    ids, _ = OpenClipBackbone.tokenize(tiny("hpsv2").backbone, prompthero)
    assert torch.equal(ids, open_clip.tokenize(prompthero))


def test_what_follows_the_end_token_does_not_change_text_features(tiny):
    """Why one tokenizer serves every CLIP: HF pads with the end token, open_clip with 0."""
    backbone = tiny("clipscore").backbone
    ids, mask = backbone.tokenize(["a cat on a mat"])
    zero_padded = ids.masked_fill((ids == EOS_ID).cumsum(-1) > 1, 0)
    assert not torch.equal(ids, zero_padded)
    with torch.no_grad():
        a = backbone._text_features(ids, mask)
        b = backbone._text_features(zero_padded, mask)
    assert torch.allclose(a, b, atol=1e-6)
