"""Target similarity and in-batch diversity: FABRIC's definitions, targets, shared encoders."""

from __future__ import annotations

import itertools

import pytest
import torch
from PIL import Image

from fabric.errors import ImageError, InvalidParameterError


def test_diversity_scores_average_to_fabrics_pairwise_metric(tiny, colour_images):
    objective = tiny("diversity")
    scores = objective.score(colour_images, "")
    embeddings = objective.encoder.embed_images(colour_images)
    pairs = [
        100 * float(embeddings[i] @ embeddings[j]) for i, j in itertools.combinations(range(len(colour_images)), 2)
    ]
    assert scores.mean().item() == pytest.approx(sum(pairs) / len(pairs), rel=1e-5)
    # per image: mean similarity to the others
    assert scores[0].item() == pytest.approx(
        sum(100 * float(embeddings[0] @ embeddings[j]) for j in range(1, 5)) / 4, rel=1e-5
    )


def test_diversity_falls_when_a_batch_gets_more_varied(tiny, colour_images):
    objective = tiny("diversity")
    alike = [colour_images[0]] * 3 + [colour_images[1]]
    varied = colour_images[:4]
    assert objective.score(alike, "").mean() > objective.score(varied, "").mean()
    assert objective.score([colour_images[0]] * 2, "").tolist() == pytest.approx([100.0, 100.0], abs=1e-3)
    with pytest.raises(InvalidParameterError, match="at least 2 images"):
        objective.score(colour_images[:1], "")


def test_target_is_most_similar_to_itself(tiny, colour_images):
    objective = tiny("target", target=colour_images[1])
    scores = objective.score(colour_images, "")
    assert scores.argmax().item() == 1 and scores[1].item() == pytest.approx(100.0, abs=1e-3)


def test_with_target_shares_the_encoder_and_only_embeds_the_target(tiny, colour_images):
    base = tiny("target", target=None)
    with pytest.raises(InvalidParameterError, match="no target image"):
        base.score(colour_images, "")
    a, b = base.with_target(colour_images[0]), base.with_target([colour_images[2], colour_images[3]])
    assert a.encoder is base.encoder is b.encoder
    assert b.target_embeddings.shape[0] == 2
    # several targets: the mean similarity over targets
    expected = (
        tiny("target", target=colour_images[2]).score(colour_images, "")
        + tiny("target", target=colour_images[3]).score(colour_images, "")
    ) / 2
    assert torch.allclose(b.score(colour_images, ""), expected, atol=1e-4)


def test_targets_from_files_and_folders(tiny, colour_images, tmp_path):
    for i, image in enumerate(colour_images[:2]):
        image.save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    from_folder = tiny("target", target=tmp_path)
    from_files = tiny("target", target=[str(tmp_path / "0.png"), tmp_path / "1.png"])
    assert torch.equal(from_folder.target_embeddings, from_files.target_embeddings)
    with pytest.raises(ImageError, match="does not exist"):
        tiny("target", target=tmp_path / "missing.png")
    with pytest.raises(ImageError, match="cannot be read"):
        tiny("target", target=tmp_path / "notes.txt")
    with pytest.raises(ImageError, match="contains no images"):
        (tmp_path / "empty").mkdir()
        tiny("target", target=tmp_path / "empty")


def test_objectives_without_a_target_refuse_one(tiny, colour_images):
    objective = tiny("pickscore")
    assert not objective.takes_target
    with pytest.raises(InvalidParameterError, match="does not take a target"):
        objective.with_target(colour_images[0])


def test_dino_and_clip_targets_disagree(tiny, colour_images):
    clip = tiny("target", target=colour_images[0]).score(colour_images, "")
    dino = tiny("target", target=colour_images[0], encoder="dino").score(colour_images, "")
    assert not torch.allclose(clip, dino)
    with pytest.raises(InvalidParameterError, match="encoder must be 'clip' or 'dino'"):
        tiny("target", encoder="siglip")


def test_target_image_is_converted_from_any_mode(tiny):
    objective = tiny("target", target=Image.new("RGBA", (40, 30), (255, 0, 0, 10)))
    assert objective.target_embeddings.shape == (1, 32)
