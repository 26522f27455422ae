"""A model card's ``base_model`` (the YAML front matter of the ``README.md`` beside the weights).

The Hub's model cards declare what a model was made from::

    ---
    base_model: meta-llama/Llama-2-7b-hf
    ---

or as a list (``base_model:`` followed by ``- org/name`` lines). Only that
key is read, with a line parser (no YAML library, no object construction);
the card is read only when it is a regular file, and only its first
:data:`CARD_READ_BYTES`. A card is a claim of whoever uploaded the model,
so it is evidence of direction, never of relatedness.
"""

from __future__ import annotations

import re
from pathlib import Path

from awmtrace.errors import AwmError
from awmtrace.io.base import open_regular

__all__ = ["CARD_NAME", "CARD_READ_BYTES", "MAX_CARD_BYTES", "card_base_models"]

CARD_NAME = "README.md"
#: How much of a card is read: the front matter comes first.
CARD_READ_BYTES = 64 << 10
#: Largest card the Hub fetcher downloads (real cards are a few kB to a few hundred kB).
MAX_CARD_BYTES = 1 << 20
#: Longest ``base_model`` value kept, and how many are kept.
_MAX_NAME = 200
_MAX_BASES = 16

_FRONT = re.compile(r"\A\ufeff?---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.S)


def _clean(value: str) -> str:
    value = value.split(" #", 1)[0].strip().strip("'\"").strip()
    return value if 0 < len(value) <= _MAX_NAME and value.isprintable() else ""


def card_base_models(folder: Path | str) -> list[str]:
    """The ``base_model`` entries of the card in ``folder`` (none when there is no card, no front matter or no such key).

    A card that is not a regular file (a FIFO, a device, a folder) or cannot
    be read counts as no card: it is optional evidence, never a reason to
    refuse the model.
    """
    path = Path(folder) / CARD_NAME
    try:
        with open_regular(path, "model card") as fh:
            text = fh.read(CARD_READ_BYTES).decode("utf-8", errors="replace")
    except (AwmError, OSError):
        return []
    m = _FRONT.match(text)
    if not m:
        return []
    bases: list[str] = []
    lines = m.group(1).splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("base_model:"):
            continue
        value = line.split(":", 1)[1].strip()
        if value.startswith("[") and value.endswith("]"):  # flow style: base_model: [a, b]
            bases.extend(_clean(v) for v in value[1:-1].split(","))
        elif value:
            bases.append(_clean(value))
        else:
            for follow in lines[i + 1 :]:
                item = follow.strip()
                if not item.startswith("- "):
                    break
                bases.append(_clean(item[2:]))
    return list(dict.fromkeys(b for b in bases if b))[:_MAX_BASES]
