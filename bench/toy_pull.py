"""Does feedback pull towards liked images and push away from disliked ones, attribute by attribute?

``python -m bench.toy_pull``: three measurements on the toy model, each paired (the same prompt
and seeds with and without feedback) and summarised over prompts with a percentile bootstrap CI.

* **pull**: for each colour- and kind-free prompt ("a large shape on a gray background", ...), two
  images of that prompt are liked (then, separately, disliked). Distance to the nearest liked
  image is measured twice: on 8x8 RGB thumbnails (pixels, no model) and as the attribute
  classifier's agreement (of colour set, kind set, size set, background and count, the share
  that match). Pull = how much closer the outputs are with feedback than without.
* **colour**: for each of the 8 colours and each background, two generated images of that colour
  are liked (disliked); the prompt "a shape on a <background> background" names no colour.
  Steering = the classifier's probability that the colour is present, with minus without.
* **shape**: the same for each of the 5 kinds.

Results go to the log and, with ``--json``, to a file; docs/BENCHMARKS.md quotes them.
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

__all__ = ["PullConfig", "pull_prompts", "feedback_pull", "attribute_steering", "main"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PullConfig:
    """What the benchmark runs."""

    seed: int = 0
    images: int = 4  # outputs per prompt and arm
    candidates: int = 8  # generated per liked pair, of which the 2 most typical are liked
    steps: int = 20
    guidance_scale: float = 6.0
    max_weight: float = 0.8  # the A1111 default (as bench.toy (b)); the paper's is 0.3
    min_weight: float = 0.0  # the paper's and A1111's
    feedback_end: float = 0.8  # the paper's and A1111's
    bootstrap: int = 2000


def pull_prompts() -> list[str]:
    """18 prompts that name neither a colour nor a kind of shape: 6 backgrounds x (no size,
    small, large)."""
    from toyworld.scenes import BACKGROUNDS

    return [f"a {size}shape on a {bg} background" for size in ("", "small ", "large ") for bg in BACKGROUNDS]


def _thumbnails(images: Sequence) -> Any:
    """PIL images -> ``n x 192`` float tensor: 8x8 RGB thumbnails in ``[0, 1]``."""
    import numpy as np
    import torch
    from PIL import Image

    arrays = [
        np.asarray(im.convert("RGB").resize((8, 8), Image.Resampling.BOX), dtype=np.float32) / 255 for im in images
    ]
    return torch.from_numpy(np.stack(arrays)).flatten(1)


def _attributes(classifier, images: Sequence) -> Any:
    """The classifier's reading of each image: ``n x 5`` ids (one per head; a multi-label head's
    predicted set is encoded as a bit mask)."""
    import torch

    from toyworld.rewards import HEADS

    probs = classifier.probabilities(images)
    columns = []
    for head, (classes, multi) in HEADS.items():
        if multi:
            bits = 2 ** torch.arange(len(classes))
            columns.append(((probs[head] > 0.5).long() * bits).sum(-1))
        else:
            columns.append(probs[head].argmax(-1))
    return torch.stack(columns, dim=1)


def _closeness(classifier, outputs: Sequence, references: Sequence) -> tuple[float, float]:
    """Mean over ``outputs`` of (thumbnail L2 distance to the nearest reference, highest share of
    the 5 attributes that agree with a reference)."""
    import torch

    distance = torch.cdist(_thumbnails(outputs), _thumbnails(references)).min(dim=1).values
    ours, theirs = _attributes(classifier, outputs), _attributes(classifier, references)
    agreement = (ours[:, None, :] == theirs[None, :, :]).float().mean(-1).max(dim=1).values
    return float(distance.mean()), float(agreement.mean())


def _summary(values: Sequence[float], rng, n_boot: int) -> dict:
    import numpy as np

    v = np.asarray(values, dtype=float)
    boot = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    return {
        "mean": round(float(v.mean()), 4),
        "95% CI": [round(float(np.percentile(boot, 2.5)), 4), round(float(np.percentile(boot, 97.5)), 4)],
        "positive": f"{int((v > 0).sum())}/{len(v)}",
        "share positive": round(float((v > 0).mean()), 3),
    }


def _params(cfg: PullConfig):
    from fabric.params import FabricParams

    return FabricParams(
        steps=cfg.steps,
        guidance_scale=cfg.guidance_scale,
        max_weight=cfg.max_weight,
        min_weight=cfg.min_weight,
        feedback_end=cfg.feedback_end,
    )


def feedback_pull(gen, classifier, cfg: PullConfig, prompts: Sequence[str] | None = None) -> dict:
    """Like (then dislike) two of a prompt's own images; are the outputs closer (farther)?"""
    import numpy as np

    params, rng = _params(cfg), np.random.default_rng(cfg.seed)
    prompts = list(prompts) if prompts is not None else pull_prompts()
    rows: dict[str, list[float]] = {k: [] for k in ("pull, thumbnail", "pull, attributes")}
    rows.update({k: [] for k in ("push, thumbnail", "push, attributes")})
    for p, prompt in enumerate(prompts):
        base = 7_000_000 + 1_000 * p + 100 * cfg.seed
        references = gen.generate(prompt, params=params, n_images=2, seed=[base + 900, base + 901])
        seeds = [base + i for i in range(cfg.images)]
        arms = {
            "none": gen.generate(prompt, params=params, n_images=cfg.images, seed=seeds),
            "liked": gen.generate(prompt, liked=references, params=params, n_images=cfg.images, seed=seeds),
            "disliked": gen.generate(prompt, disliked=references, params=params, n_images=cfg.images, seed=seeds),
        }
        close = {arm: _closeness(classifier, images, references) for arm, images in arms.items()}
        rows["pull, thumbnail"].append(close["none"][0] - close["liked"][0])
        rows["pull, attributes"].append(close["liked"][1] - close["none"][1])
        rows["push, thumbnail"].append(close["disliked"][0] - close["none"][0])
        rows["push, attributes"].append(close["none"][1] - close["disliked"][1])
    out: dict = {"prompts": prompts}
    out.update({k: _summary(v, rng, cfg.bootstrap) for k, v in rows.items()})
    out["per prompt"] = {k: [round(x, 4) for x in v] for k, v in rows.items()}
    return out


def attribute_steering(gen, classifier, cfg: PullConfig, head: str) -> dict:
    """Per class of ``head`` ("colour" or "shape"): like (dislike) two generated images that show
    it; how much more (less) often does a prompt that does not name it show it?"""
    import numpy as np
    import torch

    from toyworld.rewards import HEADS
    from toyworld.scenes import BACKGROUNDS

    params, rng = _params(cfg), np.random.default_rng(cfg.seed + 1)
    classes = HEADS[head][0]
    per_class: dict[str, dict] = {}
    gains: list[float] = []
    pushes: list[float] = []
    for c, name in enumerate(classes):
        class_gain: list[float] = []
        class_push: list[float] = []
        freq: dict[str, list[float]] = {"none": [], "liked": [], "disliked": []}
        for b, background in enumerate(BACKGROUNDS):
            if head == "colour" and name == background:
                continue  # a shape never takes its background's colour name
            base = 9_000_000 + 10_000 * c + 1_000 * b + 100 * cfg.seed
            source = f"a {name} shape" if head == "colour" else f"a {name}"
            source += f" on a {background} background"
            candidates = gen.generate(
                source, params=params, n_images=cfg.candidates, seed=[base + 500 + i for i in range(cfg.candidates)]
            )
            shown = classifier.probabilities(candidates)[head][:, c]
            references = [candidates[int(i)] for i in torch.argsort(shown, descending=True)[:2]]
            prompt = f"a shape on a {background} background"
            seeds = [base + i for i in range(cfg.images)]
            p = {
                "none": gen.generate(prompt, params=params, n_images=cfg.images, seed=seeds),
                "liked": gen.generate(prompt, liked=references, params=params, n_images=cfg.images, seed=seeds),
                "disliked": gen.generate(prompt, disliked=references, params=params, n_images=cfg.images, seed=seeds),
            }
            present = {arm: float(classifier.probabilities(images)[head][:, c].mean()) for arm, images in p.items()}
            for arm, value in present.items():
                freq[arm].append(value)
            class_gain.append(present["liked"] - present["none"])
            class_push.append(present["none"] - present["disliked"])
        gains += class_gain
        pushes += class_push
        per_class[name] = {
            "P(shown), no feedback": round(float(np.mean(freq["none"])), 3),
            "P(shown), liked": round(float(np.mean(freq["liked"])), 3),
            "P(shown), disliked": round(float(np.mean(freq["disliked"])), 3),
            "like gain": _summary(class_gain, rng, cfg.bootstrap),
            "dislike push": _summary(class_push, rng, cfg.bootstrap),
        }
        logger.info("%s %-8s %s", head, name, per_class[name])
    return {
        "per class": per_class,
        "like gain, all pairs": _summary(gains, rng, cfg.bootstrap),
        "dislike push, all pairs": _summary(pushes, rng, cfg.bootstrap),
    }


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.toy_pull", description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("pull", "colour", "shape", "all"), default="all")
    parser.add_argument("--weights", type=Path, default=None, help="toy checkpoint folder (default: packaged)")
    parser.add_argument("--classifier", type=Path, default=None, help="classifier folder (default: packaged)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=PullConfig.images)
    parser.add_argument("--max-weight", type=float, default=PullConfig.max_weight)
    parser.add_argument("--min-weight", type=float, default=PullConfig.min_weight)
    parser.add_argument("--feedback-end", type=float, default=PullConfig.feedback_end)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import torch

    from fabric import FabricGenerator
    from toyworld.model import build_toy_pipeline
    from toyworld.rewards import load_attribute_classifier

    torch.set_num_threads(args.threads)
    cfg = PullConfig(
        images=args.images, max_weight=args.max_weight, min_weight=args.min_weight, feedback_end=args.feedback_end
    )
    gen = FabricGenerator(build_toy_pipeline(args.weights), plain_cache_size=64)
    classifier = load_attribute_classifier(args.classifier)
    results: dict = {"config": asdict(cfg)}
    t0 = time.perf_counter()
    if args.part in ("pull", "all"):
        results["pull"] = feedback_pull(gen, classifier, cfg)
        logger.info("pull: %s", {k: v for k, v in results["pull"].items() if k not in ("prompts", "per prompt")})
    for head in ("colour", "shape"):
        if args.part in (head, "all"):
            results[head] = attribute_steering(gen, classifier, cfg, head)
            logger.info("%s: like %s", head, results[head]["like gain, all pairs"])
            logger.info("%s: dislike %s", head, results[head]["dislike push, all pairs"])
    results["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json is not None:
        write_json(args.json, results)
    logger.info("done in %.0f s", results["seconds"])
    return results


if __name__ == "__main__":
    main()
