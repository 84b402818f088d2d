"""Reward-model throughput on CPU: ``python -m bench.objectives``.

For every objective, images scored per second (preprocessing, image and prompt encoding and
the scoring rule included), with

* tiny random models (``weights="tiny"``, what tests and demos use), and
* full-size random-weight backbones (``weights="random"``): the same architectures, shapes and
  FLOPs as the published checkpoints (CLIP ViT-L/14 at 224 and 336 px, CLIP ViT-H/14 in
  transformers and open_clip layouts, DINOv2 ViT-B/14), so the speed is the real models' speed.

Build time is the construction of a fresh model (random initialisation included; real
checkpoints skip it). Images are 512x512 RGB, the size a Stable Diffusion 1.5 round produces.
A benchmark, not a test; the full-size part takes a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import gc
import logging
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.results import write_json

__all__ = ["Result", "measure", "main"]

logger = logging.getLogger(__name__)

PROMPT = "a photograph of a red fox standing in fresh snow, golden hour"
# (objective, options): each full-size backbone once; objectives sharing one are measured apart
TINY = [
    ("pickscore", {}), ("hps", {}), ("hpsv2", {}), ("hpsv21", {}), ("aesthetic", {}),
    ("aesthetic", {"head": "linear"}), ("clipscore", {}), ("target", {}), ("target", {"encoder": "dino"}),
    ("diversity", {}), ("diversity", {"encoder": "dino"}),
]  # fmt: skip
# Groups share one backbone (built once, as load_objective shares it): build time is paid by
# the first objective of a group, the others show scoring speed only.
FULL: list[list[tuple[str, dict, str]]] = [
    [
        ("clipscore", {}, "CLIP ViT-L/14"),
        ("aesthetic", {}, "CLIP ViT-L/14 + MLP head"),
        ("diversity", {}, "CLIP ViT-L/14"),
    ],
    [("hps", {}, "CLIP ViT-L/14 (HPS v1)")],
    [("target", {}, "CLIP ViT-L/14 @ 336 px")],
    [("target", {"encoder": "dino"}, "DINOv2 ViT-B/14")],
    [("pickscore", {}, "CLIP ViT-H/14 (transformers)")],
    [("hpsv2", {}, "open_clip ViT-H-14")],
]


@dataclass(frozen=True)
class Result:
    objective: str
    options: dict
    weights: str
    backbone: str
    parameters_m: float  # millions, backbone and head
    build_s: float
    images: int
    batch_size: int
    images_per_s: float


_alive: list = []


def _images(n: int, size: int):
    from PIL import Image

    colours = [(220, 30, 30), (30, 200, 40), (30, 40, 220), (230, 220, 30), (240, 240, 240), (20, 20, 20)]
    return [Image.new("RGB", (size, size), colours[i % len(colours)]) for i in range(n)]


def _parameters(objective) -> int:
    modules = []
    for attr in ("backbone", "encoder"):
        if hasattr(objective, attr):
            modules.append(getattr(objective, attr).model)
    if hasattr(objective, "head"):
        modules.append(objective.head)
    return sum(p.numel() for m in modules for p in m.parameters())


def measure(
    name: str, options: dict, weights: str, *, images: int, batch_size: int, repeats: int, size: int, backbone: str = ""
) -> Result:
    """Builds one objective and times ``repeats`` scorings of ``images`` images."""
    import objectives

    if name == "target":
        options = {**options, "target": _images(1, size)[0]}
    start = time.perf_counter()
    objective = objectives.load_objective(name, weights=weights, batch_size=batch_size, **options)
    build = time.perf_counter() - start
    _alive.append(objective)  # keep its backbone shared with the rest of its group
    batch = _images(images, size)
    objective.score(batch[: min(2, images)], PROMPT)  # warm-up: allocator, first-call paths
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        objective.score(batch, f"{PROMPT} {i}")  # a new prompt each time: no text cache hit
        times.append(time.perf_counter() - start)
    options = {k: v for k, v in options.items() if k != "target"}
    return Result(
        objective=name,
        options=options,
        weights=weights,
        backbone=backbone or type(getattr(objective, "backbone", getattr(objective, "encoder", None))).__name__,
        parameters_m=round(_parameters(objective) / 1e6, 2),
        build_s=round(build, 3),
        images=images,
        batch_size=batch_size,
        images_per_s=round(images / statistics.median(times), 2),
    )


def _warm_imports() -> None:
    """Library imports and the tokenizer build are one-off costs, not model build time."""
    import open_clip  # noqa: F401
    from transformers import CLIPModel, Dinov2Model  # noqa: F401

    from objectives.clip import clip_tokenizer

    clip_tokenizer()


def _table(results: list[Result]) -> str:
    lines = [
        "| objective | weights | backbone | params (M) | build (s) | images x batch | images/s |",
        "|---|---|---|---:|---:|---|---:|",
    ]
    for r in results:
        label = r.objective + "".join(f" {k}={v}" for k, v in r.options.items())
        lines.append(
            f"| {label} | {r.weights} | {r.backbone} | {r.parameters_m} | {r.build_s} | {r.images} x "
            f"{r.batch_size} | {r.images_per_s} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the machine is shared)")
    parser.add_argument("--no-full", action="store_true", help="tiny models only (seconds)")
    parser.add_argument("--full-images", type=int, default=4, help="images per timed call, full-size models")
    parser.add_argument("--size", type=int, default=512, help="input image side in pixels")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import torch

    torch.set_num_threads(args.threads)
    _warm_imports()
    results = []
    for name, options in TINY:
        _alive.clear()
        gc.collect()  # every tiny objective builds its own model: build time is measured
        results.append(measure(name, options, "tiny", images=16, batch_size=16, repeats=5, size=args.size))
        logger.info("%s", results[-1])
    if not args.no_full:
        for group in FULL:
            _alive.clear()
            gc.collect()  # free the previous backbone (ViT-H-14 is 4 GB in float32)
            for name, options, backbone in group:
                n = args.full_images
                results.append(
                    measure(
                        name, options, "random", images=n, batch_size=n, repeats=1, size=args.size, backbone=backbone
                    )
                )
                logger.info("%s", results[-1])
    table = _table(results)
    sys.stdout.write(table + "\n")
    if args.json:
        meta = {
            "torch": torch.__version__,
            "threads": args.threads,
            "machine": platform.processor() or platform.machine(),
        }
        write_json(args.json, {"meta": meta, "results": [asdict(r) for r in results]}, indent=2)
    return results


if __name__ == "__main__":
    main()
