"""Results streamed to Parquet as they finish, so an interrupted sweep keeps its work and ``--resume`` ends it.

While a sweep runs, ``OUT.parquet.parts/`` holds ``_manifest.json`` (the sweep's fingerprint: spec, base job,
tiers) and numbered part files, each a complete Parquet file written to a temporary name and renamed into place:
a sweep killed at any moment leaves only whole parts. Every part holds the evaluated points of one flush
(the point's ``index`` and the same columns in every part), so ``pandas.read_parquet(OUT.parquet.parts)``
reads an unfinished sweep's results.
Pruned points are not streamed: pruning is deterministic and cheap, so a resumed sweep prunes again. At the
end the whole DataFrame is written to ``OUT.parquet`` (atomically) and the parts are removed.

``--resume`` reads the parts back (refusing parts of another sweep: the fingerprint must match) and the
sweep evaluates only what they lack; without it an existing parts folder is an error, never overwritten.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from sim.errors import SimInputError


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def require_parquet(option: str = "--out") -> None:
    """Refuse ``option`` (exit 2) when pyarrow, which writes and reads the parts, is not installed (the
    Quick-start install has no ``sweep`` extra): checked before anything is written."""
    if importlib.util.find_spec("pyarrow") is None:
        raise SimInputError("writing Parquet needs pyarrow: pip install -e '.[sweep]'", field=option)


class Store:
    """Streaming parts of one sweep's results (module docstring); ``out=None`` keeps nothing on disk."""

    def __init__(self, out: str | Path | None, key: str, resume: bool, flush_s: float = 2.0,
                 flush_rows: int = 2000) -> None:
        self.out = Path(out) if out else None
        self.key = key
        self.flush_s, self.flush_rows = flush_s, flush_rows
        self._buffer: dict[str, list[dict[str, Any]]] = {}
        self._last = time.monotonic()
        self._n = 0
        self.parts = self.out.with_name(self.out.name + ".parts") if self.out else None
        if self.parts is None:
            if resume:
                raise SimInputError("needs --out (the sweep to resume)", field="--resume")
            return
        require_parquet()
        if not self.parts.parent.is_dir():
            raise SimInputError(f"folder {self.parts.parent} does not exist", field="--out")
        manifest = self.parts / "_manifest.json"  # "_": not read as data by pyarrow
        if self.parts.exists():
            if not resume:
                raise SimInputError(f"{self.parts} holds an unfinished sweep: add --resume to finish it, or "
                                    "remove it to start again", field="--out")
            try:
                found = json.loads(manifest.read_text())["key"]
            except (OSError, ValueError, KeyError):
                found = None
            if found != key:
                raise SimInputError(f"{self.parts} is from another sweep (spec, base job or tiers differ)",
                                    field="--resume")
            self._n = len(list(self.parts.glob("*.parquet")))
        else:
            self.parts.mkdir()
            manifest.write_text(json.dumps({"key": key}))

    def done(self, kind: str) -> pd.DataFrame | None:
        """Rows of ``kind`` streamed by an earlier run (resume), or None."""
        if self.parts is None or not self.parts.exists():
            return None
        frames = [pd.read_parquet(p) for p in sorted(self.parts.glob(f"{kind}-*.parquet"))]
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else None

    def add(self, kind: str, rows: list[dict[str, Any]]) -> None:
        if self.parts is None:
            return
        self._buffer.setdefault(kind, []).extend(rows)
        if (sum(len(b) for b in self._buffer.values()) >= self.flush_rows
                or time.monotonic() - self._last >= self.flush_s):
            self.flush()

    def flush(self) -> None:
        if self.parts is None:
            return
        for kind, rows in self._buffer.items():
            if rows:
                self._write(self.parts / f"{kind}-{self._n:06d}.parquet", pd.DataFrame(rows))
                self._n += 1
        self._buffer = {}
        self._last = time.monotonic()

    @staticmethod
    def _write(path: Path, frame: pd.DataFrame) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)

    def finish(self, frame: pd.DataFrame) -> None:
        """The whole result to ``out``; the parts go."""
        self.flush()
        if self.out is None:
            return
        self._write(self.out, frame)
        if self.parts is not None and self.parts.exists():
            shutil.rmtree(self.parts)
