"""What tuned feedback does, in pictures: the first and last round of each parameter set.

:func:`feedback_showcase` replays the study's protocol on a few (held-out) prompts for several
named parameter sets, on the same seeds and with the same simulated user, and lays the rounds
out as one image:

* a header that says who the simulated user is (what it likes, how it picks) and, for a guarded
  study, what the guard keeps;
* a block per prompt, a row per parameter set, the first round on the left and the final round
  on the right (rounds count from 1, as in MLflow), every image labelled with its reward (and the
  guard's score), the user's liked and disliked images framed (green, red);
* under each row, why it differs: the parameters in which it differs from the paper's defaults,
  and, when the row drops prompt words (``prompt_dropout``), the prompt each shown image was
  generated from. The first round never has feedback, so rows without dropout share its images.

The ``no feedback`` row is the baseline (the same seeds, nothing liked or disliked), so a row that
improves on it from left to right shows feedback at work. ``fabric-opt report`` writes it as
``showcase.png``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from fabric.errors import ConfigError
from fabric.params import FabricParams

if TYPE_CHECKING:
    from PIL import Image

    from optimize.protocol import Split, TrialEvaluator
    from optimize.recommend import Recommendation
    from optimize.space import SearchSpace

__all__ = ["NO_FEEDBACK", "feedback_showcase", "showcase_candidates", "describe_user", "describe_params", "row_notes"]

NO_FEEDBACK = "no feedback"
_GAP = 12  # pixels between the first and the last round, and between rows
_LINE = 22  # pixels per caption line
_CHAR = 8.5  # rough width of a caption character, for wrapping


def feedback_showcase(
    evaluator: TrialEvaluator,
    candidates: Mapping[str, FabricParams],
    *,
    split: Split = "validation",
    prompts: Sequence[int] = (0,),
    baseline: bool = True,
    reference: str | None = "paper",
) -> Image.Image:
    """Render the first and final rounds of each candidate on ``prompts`` (see module docs).

    Args:
        evaluator: the study's evaluator (its protocol, generator, user and scored objective).
        candidates: ``label -> parameters``, one row each, in order.
        split: whose prompts (``"validation"``: held out).
        prompts: indices into that split's prompts, one block each.
        baseline: add the ``no feedback`` row first.
        reference: the candidate the other rows' parameters are compared with (default the
            paper's defaults' row, if there is one; else the paper's defaults themselves).

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
    guard = evaluator.guard.name if evaluator.guard is not None else None
    last = evaluator.protocol.rounds - 1
    all_prompts, _ = evaluator.protocol.split(split)
    ref_label: str
    if reference is not None and reference in candidates:
        ref_label, ref_params = reference, candidates[reference]
    else:
        ref_label, ref_params = (
            "paper",
            FabricParams.paper().replace(
                steps=evaluator.space.base.steps, guidance_scale=evaluator.space.base.guidance_scale
            ),
        )
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
                    if guard is not None and guard in scores:
                        title += f", {guard} {sum(scores[guard]) / len(scores[guard]):.2f}"
                    shown = {k: scores[k] for k in (names[0], guard) if k is not None and k in scores}
                    kept[r] = reward_grid(images, shown, title=title, choice=choice)

            evaluator.run_prompt(params, p, split=split, feedback=feedback, on_round=keep)
            left, right = kept[0], kept[last]
            row = Image.new("RGB", (left.width + _GAP + right.width, max(left.height, right.height)), "white")
            row.paste(left, (0, 0))
            row.paste(right, (left.width + _GAP, 0))
            notes = row_notes(evaluator, label, params, feedback, (ref_label, ref_params), split=split, prompt=p)
            tiles.append(_stack([row, _text_block(notes, row.width)], gap=2))
        header = _text_block(
            [f"prompt: {all_prompts[p]!r}   (left: first round; right: final round; liked framed green, disliked red)"],
            tiles[0].width,
        )
        blocks.append(_stack([header, *tiles]))
    width = max(b.width for b in blocks)
    return _stack([_text_block(describe_user(evaluator), width, bold=True), *blocks])


def describe_user(evaluator: TrialEvaluator) -> list[str]:
    """Who the simulated user is, in a line or two: what it likes, how it picks, what is guarded."""
    user = evaluator.feedback_objective
    likes = getattr(user, "description", None) or f"prefers images that {user.name} scores higher"
    temperature = evaluator.protocol.temperature
    if evaluator.protocol.feedback == "target":
        likes = f"likes images close to the prompt's target image ({user.name})"
    how = (
        "after each round it likes the best image and dislikes the worst"
        if temperature == 0
        else f"a noisy user (Bradley-Terry, temperature {temperature:g}): it often likes an image that is not the best"
    )
    lines = [f"simulated user: {likes}; {how}"]
    guard = evaluator.guard
    if guard is not None:
        floor = "the no-feedback images'" if guard.reference is None else f"the {guard.label} defaults'"
        lines.append(
            f"guard: the tuned parameters may not lose {guard.name} (mean over prompts, final round) against {floor}"
            f" (tolerance {guard.tolerance:g}; penalty {guard.penalty:g} per unit)"
        )
    return lines


def describe_params(params: FabricParams, reference: FabricParams) -> list[str]:
    """``"name old -> new"`` for every FABRIC parameter in which ``params`` differs from ``reference``."""
    out = []
    ours, theirs = params.to_dict(), reference.to_dict()
    for key, value in ours.items():
        if value != theirs[key]:
            out.append(f"{key} {_fmt(theirs[key])} -> {_fmt(value)}")
    return out


def row_notes(
    evaluator: TrialEvaluator,
    label: str,
    params: FabricParams,
    feedback: bool,
    reference: tuple[str, FabricParams],
    *,
    split: Split = "validation",
    prompt: int = 0,
) -> list[str]:
    """The caption under a showcase row: how its parameters differ from the reference row's and,
    with prompt dropout, the prompt each image of its first and final rounds was generated from."""
    from fabric.fabric_generator import prompts_after_dropout

    notes = [_row_note(label, params, feedback, *reference)]
    if params.prompt_dropout > 0:
        text = evaluator.protocol.split(split)[0][prompt]
        for r in sorted({0, evaluator.protocol.rounds - 1}):
            seeds = evaluator.round_seeds(split, 0, prompt, r)
            dropped = prompts_after_dropout([text] * len(seeds), seeds, params.prompt_dropout)
            notes.append(
                f"prompt dropout {params.prompt_dropout:.2g}: round {r + 1} was generated from "
                + ", ".join(f"{i + 1}: {d!r}" for i, d in enumerate(dropped))
            )
    return notes


def _row_note(label: str, params: FabricParams, feedback: bool, ref_label: str, ref_params: FabricParams) -> str:
    if not feedback:
        return f"{label}: the same seeds and prompt, nothing liked or disliked"
    if label == ref_label:
        return (
            f"{label}: the FABRIC paper's defaults (max_weight {_fmt(params.max_weight)} from "
            f"{params.feedback_start:.0%} to {params.feedback_end:.0%} of the steps, "
            f"neg_scale {_fmt(params.neg_scale)})"
        )
    changes = describe_params(params, ref_params)
    if not changes:
        return f"{label}: the same parameters as {ref_label}"
    return f"{label} differs from {ref_label} in: " + ", ".join(changes)


def showcase_candidates(
    recommendation: Recommendation, space: SearchSpace, references: Sequence[str] = ()
) -> dict[str, FabricParams]:
    """The rows of a study's showcase: each reference preset (mapped into ``space``, as the
    held-out comparison does), then the recommendation."""
    from optimize.samplers import DEFAULT_PRESETS

    rows = {name: space.to_params(space.from_params(DEFAULT_PRESETS[name], clip=True)) for name in references}
    rows[f"tuned (trial {recommendation.best.trial_number})"] = recommendation.params
    return rows


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "all" if value is None else str(value)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _text_block(lines: Sequence[str], width: int, *, bold: bool = False) -> Image.Image:
    """Lines of text wrapped to ``width`` pixels, on white."""
    from PIL import Image, ImageDraw

    chars = max(20, int((width - 8) / _CHAR))
    wrapped = [part for line in lines for part in (textwrap.wrap(line, chars) or [""])]
    block = Image.new("RGB", (width, _LINE * len(wrapped) + 4), "white")
    draw = ImageDraw.Draw(block)
    font = _font(17 if bold else 15)  # the header a little larger
    for i, line in enumerate(wrapped):
        draw.text((4, 2 + i * _LINE), line, fill="black", font=font)
    return block


def _stack(images: Sequence[Image.Image], gap: int = _GAP) -> Image.Image:
    from PIL import Image

    width = max(im.width for im in images)
    out = Image.new("RGB", (width, sum(im.height for im in images) + gap * (len(images) - 1)), "white")
    y = 0
    for im in images:
        out.paste(im, (0, y))
        y += im.height + gap
    return out
