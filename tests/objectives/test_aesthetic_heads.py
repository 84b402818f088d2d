"""The published LAION aesthetic heads load and rank real CLIP embeddings (../shared fixtures)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from objectives.aesthetic import MLPHead, load_head


@pytest.fixture(scope="module")
def aesthetic_fixtures(shared_dir):
    root = shared_dir / "fixtures" / "aesthetic"
    if not (root / "vit_l_14_embeddings").is_dir():
        pytest.skip(f"aesthetic fixtures not found under {root}")
    return root


def mean_scores(head: torch.nn.Module, root) -> list[float]:
    """Mean head output over ``rating0..9.npy`` (unit CLIP ViT-L/14 embeddings of rated images)."""
    means = []
    for rating in range(10):
        embeddings = torch.from_numpy(np.load(root / "vit_l_14_embeddings" / f"rating{rating}.npy")).float()
        assert embeddings.shape[-1] == 768
        with torch.no_grad():
            means.append(head(torch.nn.functional.normalize(embeddings, dim=-1)).mean().item())
    return means


@pytest.mark.parametrize(
    ("kind", "file"), [("mlp", "sac+logos+ava1-l14-linearMSE.pth"), ("linear", "sa_0_4_vit_l_14_linear.pth")]
)
def test_published_heads_rank_rated_embeddings_in_order(aesthetic_fixtures, kind, file):
    # the folder form: the head's published file name is found inside it
    head = load_head(str(aesthetic_fixtures), kind)
    assert isinstance(head, MLPHead if kind == "mlp" else torch.nn.Linear)
    assert next(head.parameters()).shape[-1] == 768
    means = mean_scores(head, aesthetic_fixtures)
    assert all(a < b for a, b in zip(means, means[1:])), means
    # and the file form gives the same head
    same = load_head(str(aesthetic_fixtures / file), kind)
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), same.state_dict().values()))


def test_mlp_head_scores_are_on_the_published_scale(aesthetic_fixtures):
    means = mean_scores(load_head(str(aesthetic_fixtures), "mlp"), aesthetic_fixtures)
    assert 1.0 < means[0] < 3.0 and 5.0 < means[9] < 7.0  # the improved predictor's 1..10 scale


def test_head_and_backbone_widths_must_agree(aesthetic_fixtures, tiny):
    from fabric.errors import ModelLoadError
    from objectives.aesthetic import AestheticScore

    with pytest.raises(ModelLoadError, match="768-d CLIP embeddings but the backbone gives 32-d"):
        AestheticScore(tiny("clipscore").backbone, load_head(str(aesthetic_fixtures), "mlp"))
