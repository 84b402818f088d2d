import pytest

from fabric import FabricParams
from fabric.schedule import active_steps, block_of_layer, depth_profile, layer_weights, step_weight, step_weights


def test_active_steps_follow_the_reference_rounding():
    # N=20, start 0, end 0.8 -> i_start 0, i_end 16 (inclusive)
    assert list(active_steps(20, 0.0, 0.8)) == list(range(0, 17))
    # round() is banker's rounding: 20 * 0.33 = 6.6 -> 7, 20 * 0.66 = 13.2 -> 13
    assert list(active_steps(20, 0.33, 0.66)) == list(range(7, 14))
    # N=10, end 0.25 -> round(2.5) == 2 in Python
    assert list(active_steps(10, 0.0, 0.25)) == [0, 1, 2]
    assert list(active_steps(10, 1.0, 1.0)) == []  # i_start 10 is past the last step


def test_step_weight_uses_min_outside_the_window():
    p = FabricParams(feedback_start=0.5, feedback_end=0.5, min_weight=0.1, max_weight=0.9, steps=10)
    weights = [step_weight(i, 10, p) for i in range(10)]
    assert weights == [0.1] * 5 + [0.9] + [0.1] * 4
    sw = step_weights(5, 10, p.replace(neg_scale=0.5))
    assert sw.pos == 0.9 and sw.neg == pytest.approx(0.45) and sw.needs_references
    assert not step_weights(0, 10, p.replace(min_weight=0.0)).needs_references


def test_depth_profile_sd15():
    down, mid, up = depth_profile(1.0, 0.5, 4)
    assert down == pytest.approx([1.0, 0.875, 0.75, 0.625])
    assert mid == 0.5
    assert up == pytest.approx([0.625, 0.75, 0.875, 1.0])
    assert depth_profile(0.8, 1.0, 3) == ([0.8] * 3, 0.8, [0.8] * 3)  # flat profile


def test_layer_names_map_to_mirrored_blocks():
    names = [
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
        "down_blocks.2.attentions.1.transformer_blocks.0.attn1",
        "mid_block.attentions.0.transformer_blocks.0.attn1",
        "up_blocks.1.attentions.2.transformer_blocks.0.attn1",
        "up_blocks.3.attentions.0.transformer_blocks.0.attn1",
    ]
    assert [block_of_layer(n) for n in names] == [("down", 0), ("down", 2), ("mid", 0), ("up", 1), ("up", 3)]
    w = layer_weights(names, 1.0, 0.0, 4)  # linspace(1, 0, 5) = 1, .75, .5, .25 | 0
    assert w[names[0]] == 1.0 and w[names[1]] == 0.5 and w[names[2]] == 0.0
    assert w[names[3]] == 0.5  # up block 1 mirrors down block 2
    assert w[names[4]] == 1.0  # outermost up block mirrors down block 0
    with pytest.raises(ValueError):
        block_of_layer("conv_in")
