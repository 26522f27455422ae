"""A :class:`TensorSource` over float32 arrays held in memory.

``awm stress`` scores transformed copies of a model's tensors without ever
writing them next to the model (or anywhere): the copies live in a dict and
this source serves them to the pipeline exactly as a file reader would.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from awmtrace.errors import MissingTensor
from awmtrace.io.base import RowReader, TensorSource, to_float32

__all__ = ["MemorySource"]


class MemorySource(TensorSource):
    """Named float32 arrays as a checkpoint.

    ``tensors`` maps names to arrays (any float dtype; stored as float32,
    C-ordered). ``label`` names the source in messages (``path`` is
    ``<memory>/label``, never a real file). ``config`` and ``metadata`` are
    what a file reader would report (empty by default).
    """

    def __init__(
        self,
        tensors: Mapping[str, np.ndarray],
        label: str = "memory",
        config: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path("<memory>") / label
        self.format = "memory"
        self.config = dict(config or {})
        self.metadata = dict(metadata or {})
        self._tensors: dict[str, np.ndarray] = {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in tensors.items()}

    def _get(self, name: str) -> np.ndarray:
        try:
            return self._tensors[name]
        except KeyError:
            raise MissingTensor(f"{self.path}: no tensor {name!r} (it holds {len(self._tensors)} tensors)") from None

    def names(self) -> list[str]:
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(n) for n in self._get(name).shape)

    def dtype(self, name: str) -> str:
        self._get(name)
        return "F32"

    def read(self, name: str) -> np.ndarray:
        return to_float32(self._get(name), f"{self.path}: tensor {name!r}")

    def row_reader(self, name: str) -> RowReader:
        return RowReader(self._get(name), lambda block: block, f"{self.path}: tensor {name!r}")

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def close(self) -> None:
        self._tensors = {}
