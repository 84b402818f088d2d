"""What tuned feedback does, in pictures: the first and last round of each parameter set.

:func:`feedback_showcase` replays the study's protocol on a few (held-out) prompts for several
named parameter sets, on the same seeds and with the same simulated user, and lays the rounds
out as one image: a block per prompt, a row per parameter set, the first round on the left and
the final round on the right, every image labelled with its reward and the first round's liked
and disliked images framed (green, red). The ``no feedback`` row is
the baseline (the same seeds, nothing liked or disliked), so a row that improves on it from left
to right shows feedback at work. ``fabric-opt report`` writes it as ``showcase.png``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from fabric.errors import ConfigError
from fabric.params import FabricParams

if TYPE_CHECKING:
    from PIL import Image

    from optimize.protocol import Split, TrialEvaluator
    from optimize.recommend import Recommendation
    from optimize.space import SearchSpace

__all__ = ["NO_FEEDBACK", "feedback_showcase", "showcase_candidates"]

NO_FEEDBACK = "no feedback"
_GAP = 12  # pixels between the first and the last round, and between rows


def feedback_showcase(
    evaluator: TrialEvaluator,
    candidates: Mapping[str, FabricParams],
    *,
    split: Split = "validation",
    prompts: Sequence[int] = (0,),
    baseline: bool = True,
) -> Image.Image:
    """Render the first and final rounds of each candidate on ``prompts`` (see module docs).

    Args:
        evaluator: the study's evaluator (its protocol, generator, user and scored objective).
        candidates: ``label -> parameters``, one row each, in order.
        split: whose prompts (``"validation"``: held out).
        prompts: indices into that split's prompts, one block each.
        baseline: add the ``no feedback`` row first.

    Returns:
        One RGB image.
    """
    from PIL import Image

    from optimize.tracking import reward_grid

    if not candidates:
        raise ConfigError("the showcase needs at least one parameter set")
    rows: list[tuple[str, FabricParams, bool]] = [(label, params, True) for label, params in candidates.items()]
    if baseline:
        rows.insert(0, (NO_FEEDBACK, evaluator.space.base, False))
    names = evaluator.objective_names
    last = evaluator.protocol.rounds - 1
    all_prompts, _ = evaluator.protocol.split(split)
    blocks: list[Image.Image] = []
    for p in prompts:
        tiles: list[Image.Image] = []
        for label, params, feedback in rows:
            kept: dict[int, Image.Image] = {}

            def keep(
                prompt_index: int,
                r: int,
                images: list,
                scores: Mapping[str, list[float]],
                choice: tuple[int, int] | None,
            ) -> None:
                if r in (0, last):  # rounds from 1 in titles, as everywhere people read them
                    mean = sum(scores[names[0]]) / len(scores[names[0]])
                    title = f"{label}: round {r + 1}, mean {names[0]} {mean:.3g}"
                    kept[r] = reward_grid(images, {names[0]: scores[names[0]]}, title=title, choice=choice)

            evaluator.run_prompt(params, p, split=split, feedback=feedback, on_round=keep)
            left, right = kept[0], kept[last]
            row = Image.new("RGB", (left.width + _GAP + right.width, max(left.height, right.height)), "white")
            row.paste(left, (0, 0))
            row.paste(right, (left.width + _GAP, 0))
            tiles.append(row)
        header = _text_line(f"prompt: {all_prompts[p]!r}   (left: first round; right: final round)", tiles[0].width)
        blocks.append(_stack([header, *tiles]))
    return _stack(blocks)


def showcase_candidates(
    recommendation: Recommendation, space: SearchSpace, references: Sequence[str] = ()
) -> dict[str, FabricParams]:
    """The rows of a study's showcase: each reference preset (mapped into ``space``, as the
    held-out comparison does), then the recommendation."""
    from optimize.samplers import DEFAULT_PRESETS

    rows = {name: space.to_params(space.from_params(DEFAULT_PRESETS[name], clip=True)) for name in references}
    rows[f"tuned (trial {recommendation.best.trial_number})"] = recommendation.params
    return rows


def _text_line(text: str, width: int) -> Image.Image:
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=16)
    except (TypeError, OSError):
        font = ImageFont.load_default()
    line = Image.new("RGB", (width, 26), "white")
    ImageDraw.Draw(line).text((4, 4), text, fill="black", font=font)
    return line


def _stack(images: Sequence[Image.Image]) -> Image.Image:
    from PIL import Image

    width = max(im.width for im in images)
    out = Image.new("RGB", (width, sum(im.height for im in images) + _GAP * (len(images) - 1)), "white")
    y = 0
    for im in images:
        out.paste(im, (0, y))
        y += im.height + _GAP
    return out
