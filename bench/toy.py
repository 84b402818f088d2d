"""Evidence that the toy world means something: ``python -m bench.toy``.

(a) Prompt following: the toy model draws held-out captions (never seen in training); the
    attribute classifier checks colour, shape, size and background against the caption. The
    same classifier on rendered images of the same captions is the ceiling, 1/#classes the floor.
(b) FABRIC steers: a simulated user (a ``toy-taste``) likes the round's best image and dislikes
    its worst; over rounds, the liked attribute's frequency with feedback is compared with the
    same seeds without feedback, paired per prompt, with a bootstrap CI over prompts. The
    prompts name neither colour nor kind, so the taste's attribute is free to change.
(c) Tuning pays: not here; it is a study, ``fabric-opt study --study toy`` (and ``toy-noisy``)
    then ``fabric-opt report``, whose held-out comparison is the paired bootstrap CI.

Results go to the log and, with ``--json``, to a file; docs/BENCHMARKS.md quotes them.
A benchmark, not a test: it takes minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.results import write_json

__all__ = ["BenchConfig", "prompt_following", "feedback_steering", "main"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchConfig:
    """What the benchmark runs."""

    seed: int = 0
    n_prompts: int = 24  # held-out single-shape captions for (a)
    exact_captions: int = 200  # (a)'s exact-set reading: held-out captions, half of them two-shape
    exact_seed: int | None = None  # ... drawn with this seed (default seed + 100, v2's own check)
    images_per_prompt: int = 4
    steps: int = 20
    guidance_scale: float = 6.0
    tastes: tuple[str, ...] = ("warm", "stars", "circles")
    # colour- and kind-free prompts (the toy model trains on such partial captions): room to steer
    feedback_prompts: tuple[str, ...] = (
        "a shape",
        "a shape on a black background",
        "a small shape",
        "a large shape on a white background",
        "a shape on a gray background",
        "a large shape",
        "a shape on a blue background",
        "a small shape on a brown background",
    )
    rounds: int = 4
    images_per_round: int = 6
    max_weight: float = 0.8  # the A1111 default; the paper's 0.3 is reported with --paper-weight


def _seeds(base: int, n: int) -> list[int]:
    return [base + i for i in range(n)]


def prompt_following(gen, cfg: BenchConfig) -> dict:
    """Part (a): classifier accuracy of generated vs rendered images on held-out captions."""
    import torch

    from fabric.params import FabricParams
    from toyworld.rewards import HEADS, load_attribute_classifier, load_toy_clip
    from toyworld.scenes import caption, held_out_scenes, render, sample_scenes

    classifier, clip = load_attribute_classifier(), load_toy_clip()
    params = FabricParams(steps=cfg.steps, guidance_scale=cfg.guidance_scale)

    def evaluate(scenes, images) -> dict[str, float]:
        probs = classifier.probabilities(images)
        n = len(images)
        want = {
            "colour": [HEADS["colour"][0].index(s.shapes[0].colour) for s in scenes],
            "shape": [HEADS["shape"][0].index(s.shapes[0].kind) for s in scenes],
            "size": [HEADS["size"][0].index(s.shapes[0].size) for s in scenes],
            "background": [HEADS["background"][0].index(s.background) for s in scenes],
        }
        out = {h: float((probs[h].argmax(-1) == torch.tensor(v)).float().mean()) for h, v in want.items()}
        out["all four"] = float(
            torch.stack([probs[h].argmax(-1) == torch.tensor(v) for h, v in want.items()]).all(0).float().mean()
        )
        out["one shape"] = float((probs["count"].argmax(-1) == 0).float().mean())
        img, txt = clip.embed_images(images), clip.embed_texts([caption(s) for s in scenes])
        out["toy-clip"] = float((100 * (img * txt).sum(-1)).mean())
        out["n"] = n
        return out

    results = {}
    splits = {
        "held-out captions": held_out_scenes(cfg.n_prompts, seed=cfg.seed + 100),
        "training captions": sample_scenes(cfg.n_prompts, seed=cfg.seed + 200, split="train", n_shapes=1),
    }
    for split, scenes in splits.items():
        t0 = time.perf_counter()
        generated, repeated = [], []
        for k, scene in enumerate(scenes):
            seeds = _seeds(10_000 * (k + 1), cfg.images_per_prompt)
            generated += gen.generate(caption(scene), params=params, n_images=cfg.images_per_prompt, seed=seeds)
            repeated += [scene] * cfg.images_per_prompt
        results[f"generated, {split}"] = evaluate(repeated, generated)
        results[f"generated, {split}"]["seconds"] = time.perf_counter() - t0
        results[f"rendered, {split}"] = evaluate(scenes, [render(s) for s in scenes])
    # the floor: what the model draws when the prompt says nothing
    blank = []
    for k in range(cfg.n_prompts):
        blank += gen.generate(
            "", params=params, n_images=cfg.images_per_prompt, seed=_seeds(10_000 * (k + 1), cfg.images_per_prompt)
        )
    results["generated, empty prompt"] = evaluate(
        [s for s in splits["held-out captions"] for _ in range(cfg.images_per_prompt)], blank
    )
    results["chance"] = {h: 1 / len(HEADS[h][0]) for h in ("colour", "shape", "size", "background")}
    # the retraining target's reading (issue #17): held-out captions, half of them two-shape
    # scenes, each head's predicted set must equal the caption's exactly
    from toyworld.train import generation_accuracy

    t0 = time.perf_counter()
    modules = {"vae": gen.pipeline.vae, "unet": gen.pipeline.unet, "text_encoder": gen.pipeline.text_encoder}
    n, seed = cfg.exact_captions, cfg.seed + 100 if cfg.exact_seed is None else cfg.exact_seed
    exact = generation_accuracy(modules, seed=seed, n=n, schedule=dict(gen.pipeline.scheduler.config))
    key = f"generated, {n} held-out captions, exact sets"
    results[key] = {**(exact or {}), "n": n, "caption seed": seed, "seconds": time.perf_counter() - t0}
    return results


def feedback_steering(gen, cfg: BenchConfig, max_weight: float | None = None, out_dir: Path | None = None) -> dict:
    """Part (b): how often the liked attribute appears per round, with and without feedback.

    Policy (the FABRIC paper's): after each round, the image the taste scores highest is liked
    and the lowest disliked; feedback accumulates over rounds. Both arms use the same seeds. An
    image "has" the attribute when the taste's probability exceeds 0.5. The gain is the
    feedback arm's frequency minus the no-feedback arm's over rounds 2+, paired per prompt, with
    a percentile bootstrap CI over prompts.
    """
    import numpy as np
    import torch

    from fabric.params import FabricParams
    from toyworld.rewards import get_taste, load_attribute_classifier

    classifier = load_attribute_classifier()
    params = FabricParams(
        steps=cfg.steps,
        guidance_scale=cfg.guidance_scale,
        max_weight=cfg.max_weight if max_weight is None else max_weight,
    )
    results: dict = {"params": params.to_dict(), "prompts": list(cfg.feedback_prompts)}
    rng = np.random.default_rng(cfg.seed)
    for taste_name in cfg.tastes:
        taste = get_taste(taste_name)
        n_prompts = len(cfg.feedback_prompts)
        hits = {arm: torch.zeros(n_prompts, cfg.rounds) for arm in ("feedback", "none")}
        scores_mean = {arm: torch.zeros(n_prompts, cfg.rounds) for arm in ("feedback", "none")}
        for p, prompt in enumerate(cfg.feedback_prompts):
            for arm in ("feedback", "none"):
                liked: list[Any] = []
                disliked: list[Any] = []
                for r in range(cfg.rounds):
                    seeds = _seeds(1_000_000 * (p + 1) + 1_000 * r, cfg.images_per_round)
                    images = gen.generate(
                        prompt, liked=liked, disliked=disliked, params=params, n_images=cfg.images_per_round, seed=seeds
                    )
                    scores = taste(classifier.probabilities(images))
                    scores_mean[arm][p, r] = scores.mean()
                    hits[arm][p, r] = (scores > 0.5).float().mean()
                    if arm == "feedback":
                        liked.append(images[int(scores.argmax())])
                        disliked.append(images[int(scores.argmin())])
                    if out_dir is not None:
                        _save_grid(images, out_dir / f"{taste_name}_{p}_{arm}_round{r}.png")
        gain = (hits["feedback"][:, 1:] - hits["none"][:, 1:]).mean(dim=1).numpy()  # per prompt
        boot = gain[rng.integers(0, len(gain), size=(2000, len(gain)))].mean(axis=1)
        results[taste_name] = {
            **{f"{arm}: frequency per round": [round(float(v), 3) for v in hits[arm].mean(0)] for arm in hits},
            **{f"{arm}: mean taste per round": [round(float(v), 3) for v in scores_mean[arm].mean(0)] for arm in hits},
            "gain in frequency, rounds 2+": round(float(gain.mean()), 3),
            "95% CI": [round(float(np.percentile(boot, 2.5)), 3), round(float(np.percentile(boot, 97.5)), 3)],
            "prompts with a gain": f"{int((gain > 0).sum())}/{len(gain)}",
        }
        logger.info("taste %s: %s", taste_name, results[taste_name])
    return results


def named_attributes(prompt: str) -> dict[str, str]:
    """The attributes a toy prompt names for its (first) shape and background: head -> class."""
    from toyworld.scenes import BACKGROUNDS, SHAPES, SIZES

    shape_part, _, rest = prompt.partition(" on a ")
    words = shape_part.split()
    named = {}
    for word in words:
        if word in SIZES:
            named["size"] = word
        elif word in SHAPES:
            named["shape"] = word
    background = rest.removesuffix(" background").strip()
    if background in BACKGROUNDS:
        named["background"] = background
    return named


def tuning_cost(study: str, presets: dict[str, Path]) -> dict:
    """Part (c), the other side: what each parameter set does to prompt adherence.

    The study's held-out prompts and seeds are replayed with the study's simulated user for the
    paper's and the A1111 defaults, no feedback, and each preset; the final round is scored by
    the user's taste and by the attribute classifier against what the prompt names (size, kind,
    background; the toy prompts never name colour). A taste-only objective can trade adherence
    for taste (prompt dropout, strong weights); this shows whether it did.
    """
    import torch

    from fabric.preset import load_params
    from optimize.config import load_study_config
    from optimize.samplers import DEFAULT_PRESETS
    from optimize.study import load_components, make_evaluator
    from toyworld.rewards import HEADS, load_attribute_classifier

    config = load_study_config(study)
    evaluator = make_evaluator(config, load_components(config))
    space = config.space
    rows = {"no feedback": (space.base, False)}
    rows.update(
        {
            name: (space.to_params(space.from_params(DEFAULT_PRESETS[name], clip=True)), True)
            for name in ("paper", "a1111")
        }
    )
    rows.update(
        {
            name: (space.to_params(space.from_params(load_params(path), clip=True)), True)
            for name, path in presets.items()
        }
    )
    classifier = load_attribute_classifier()
    prompts = config.protocol.validation_prompts
    last = config.protocol.rounds - 1
    results: dict = {"study": study, "prompts": len(prompts)}
    for name, (params, feedback) in rows.items():
        taste: list[float] = []
        hits: dict[str, float] = {}
        counts: dict[str, float] = {}
        for p, prompt in enumerate(prompts):
            final: list = []
            scores_final: list = []

            def keep(_p, r, images, scores, _choice):
                if r == last:
                    final.extend(images)
                    scores_final.extend(next(iter(scores.values())))

            evaluator.run_prompt(params, p, split="validation", feedback=feedback, on_round=keep)
            taste.append(sum(scores_final) / len(scores_final))
            probs = classifier.probabilities(final)
            for head, cls in named_attributes(prompt).items():
                index = HEADS[head][0].index(cls)
                hits[head] = hits.get(head, 0.0) + float((probs[head].argmax(-1) == index).float().sum())
                counts[head] = counts.get(head, 0) + len(final)
        adherence = {h: round(hits[h] / counts[h], 3) for h in sorted(hits)}
        results[name] = {
            "final-round taste": round(float(torch.tensor(taste).mean()), 3),
            "adherence": adherence,
            "params": params.to_dict(),
        }
        logger.info("(c) %-12s taste %.3f adherence %s", name, results[name]["final-round taste"], adherence)
    return results


def _save_grid(images: Sequence, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = images[0].size
    grid = Image.new("RGB", (w * len(images), h))
    for i, image in enumerate(images):
        grid.paste(image, (i * w, 0))
    grid.save(path)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.toy", description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("a", "b", "c", "all"), default="all")
    parser.add_argument("--study", default="toy", help="(c): the study whose held-out prompts and user are replayed")
    parser.add_argument(
        "--preset",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="(c): a tuned preset to replay, e.g. tuned=runs/toy/presets/toy.json (repeatable)",
    )
    parser.add_argument("--weights", type=Path, default=None, help="toy checkpoint folder (default: packaged)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--grids", type=Path, default=None, help="save (b)'s image rows here")
    parser.add_argument("--paper-weight", action="store_true", help="also run (b) with max_weight 0.3")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tastes", nargs="+", default=None, help="tastes for (b) (default: warm stars circles)")
    parser.add_argument("--prompts", nargs="+", default=None, help="prompts for (b); '' is the empty prompt")
    parser.add_argument("--n-prompts", type=int, default=None, help="captions per split for (a)")
    parser.add_argument("--exact-captions", type=int, default=None, help="(a): captions of the exact-set reading")
    parser.add_argument("--exact-seed", type=int, default=None, help="(a): their seed (default 100)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import torch

    from fabric import FabricGenerator
    from toyworld.model import build_toy_pipeline

    torch.set_num_threads(args.threads)
    overrides = {
        "tastes": args.tastes,
        "feedback_prompts": args.prompts,
        "n_prompts": args.n_prompts,
        "exact_captions": args.exact_captions,
        "exact_seed": args.exact_seed,
    }
    cfg = BenchConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    # the no-feedback arm is the same for every taste: generate it once
    gen = FabricGenerator(build_toy_pipeline(args.weights), plain_cache_size=len(cfg.feedback_prompts) * cfg.rounds)
    results: dict = {"config": asdict(cfg)}
    t0 = time.perf_counter()
    if args.part in ("a", "all"):
        results["a"] = prompt_following(gen, cfg)
        for k, v in results["a"].items():
            logger.info("(a) %-32s %s", k, {m: round(x, 3) if isinstance(x, float) else x for m, x in v.items()})
    if args.part in ("b", "all"):
        results["b"] = feedback_steering(gen, cfg, out_dir=args.grids)
        if args.paper_weight:
            results["b, max_weight 0.3"] = feedback_steering(gen, cfg, max_weight=0.3)
    if args.part == "c":
        presets = dict(item.split("=", 1) for item in args.preset)
        results["c"] = tuning_cost(args.study, {k: Path(v) for k, v in presets.items()})
    results["seconds"] = time.perf_counter() - t0
    if args.json is not None:
        write_json(args.json, results)
    logger.info("done in %.0f s", results["seconds"])
    return results


if __name__ == "__main__":
    main()
