"""An offline CLIP tokenizer built from open_clip's bundled BPE vocabulary.

Model hubs are often unreachable (air-gapped clusters, CI). open_clip ships the 49,408-token
vocabulary that every SD 1.x/2.x/XL text encoder uses, so a transformers ``CLIPTokenizer`` can be
built from it with ids identical to open_clip's own tokenizer.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

__all__ = ["offline_clip_tokenizer", "clip_bpe_vocab"]


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte <-> printable-unicode table, which CLIP's BPE is defined over
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


@functools.lru_cache(maxsize=1)
def clip_bpe_vocab() -> tuple[dict[str, int], tuple[str, ...]]:
    """``(vocab, merges)`` of CLIP's BPE, read from open_clip's packaged file.

    The file is found without importing open_clip, which would load timm and torchvision (and
    needs ftfy) for nothing but a path.
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the offline CLIP tokenizer reads its vocabulary from open_clip: pip install open_clip_torch"
        )
    path = Path(spec.origin).with_name("bpe_simple_vocab_16e6.txt.gz")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    # same slice as CLIP's SimpleTokenizer: skip the header, keep 49152 - 256 - 2 merges
    merges = tuple(lines[1 : 49152 - 256 - 2 + 1])
    units = list(_bytes_to_unicode().values())
    tokens = units + [u + "</w>" for u in units] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


@functools.lru_cache(maxsize=4)
def offline_clip_tokenizer(model_max_length: int = 77, pad_token: str = "<|endoftext|>"):
    """A ``transformers.CLIPTokenizer`` (49,408 tokens) built without any download.

    Args:
        model_max_length: the text encoder's number of positions.
        pad_token: SD 1.x pads with ``<|endoftext|>``; SD 2.x / open_clip's bigG use ``"!"``.

    The tokenizer is cached (building it takes a few seconds); treat it as read-only.
    """
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe_vocab()
    pairs = [tuple(m.split()) for m in merges]
    tok = CLIPTokenizer(vocab=dict(vocab), merges=pairs, pad_token=pad_token)
    tok.model_max_length = model_max_length
    return tok
