"""Query results as files astronomers open directly: FITS binary table, VOTable, Parquet, CSV.

One column per field, the ten class probabilities as ``p_0`` ... ``p_9`` (official Galaxy10
DECaLS ids; each column's description names its class), sky position in degrees with units and
UCDs so TOPCAT recognises RA/Dec. Missing positions and probabilities are NaN (FITS has no null
for floats); times are ISO 8601 UTC strings.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from catalogue.errors import QueryError
from edge_agent.contract.classes import CLASS_NAMES, NUM_CLASSES

FORMATS = ("fits", "votable", "parquet", "csv")
_SUFFIX = {".fits": "fits", ".fit": "fits", ".vot": "votable", ".xml": "votable",
           ".parquet": "parquet", ".csv": "csv"}  # fmt: skip

_STR = ("device", "id", "source", "frame_ref", "received_at", "classified_at", "label",
        "model_name", "model_sha256", "model_precision", "frame_id")  # fmt: skip
_FLOAT = {
    "confidence": ("", "stat.probability", "probability of label"),
    "ra": ("deg", "pos.eq.ra;meta.main", "right ascension (ICRS) of the cut-out"),
    "dec": ("deg", "pos.eq.dec;meta.main", "declination (ICRS) of the cut-out"),
    "x": ("pix", "pos.cartesian.x;instr.det", "pixel x of the cut-out in its frame"),
    "y": ("pix", "pos.cartesian.y;instr.det", "pixel y of the cut-out in its frame"),
}


def format_for(path: Path, fmt: str | None) -> str:
    """The export format: given, or from the file's suffix."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise QueryError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
        return fmt
    found = _SUFFIX.get(path.suffix.lower())
    if found is None:
        raise QueryError(
            f"cannot tell the format of {path.name}; name it .fits .vot .parquet .csv or "
            "pass --format"
        )
    return found


def columns(rows: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Rows from ``Store.query`` -> named column arrays (the export's layout)."""
    cols: dict[str, np.ndarray] = {}
    for name in _STR:
        cols[name] = np.array([r.get(name) or "" for r in rows], dtype=str)
    cols["class_id"] = np.array([r["class_id"] for r in rows], dtype=np.int16)
    for name in _FLOAT:
        cols[name] = np.array(
            [math.nan if r.get(name) is None else float(r[name]) for r in rows], dtype=np.float64
        )
    cols["uncertain"] = np.array([bool(r["uncertain"]) for r in rows], dtype=bool)
    cols["has_thumbnail"] = np.array([bool(r.get("has_thumbnail")) for r in rows], dtype=bool)
    probs = np.full((len(rows), NUM_CLASSES), np.nan, dtype=np.float32)
    for i, r in enumerate(rows):
        if r.get("probabilities"):
            probs[i] = r["probabilities"]
    for k in range(NUM_CLASSES):
        cols[f"p_{k}"] = probs[:, k]
    return cols


def _table(rows: Sequence[dict[str, Any]]) -> Any:
    from astropy.table import Column, Table

    table = Table()
    for name, values in columns(rows).items():
        unit, ucd, desc = _FLOAT.get(name, (None, None, None))
        if name.startswith("p_"):
            k = int(name[2:])
            unit, ucd, desc = "", "stat.probability", f"probability of class {k} {CLASS_NAMES[k]}"
        meta = {"ucd": ucd} if ucd else {}
        table[name] = Column(values, unit=unit or None, description=desc, meta=meta)
    table.meta["ORIGIN"] = "galaxy-edge catalogue"
    return table


def export(rows: Sequence[dict[str, Any]], path: Path, fmt: str | None = None) -> str:
    """Write ``rows`` to ``path``; returns the format used. Overwrites an existing file."""
    fmt = format_for(path, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        cols = columns(rows)
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(cols)
            for i in range(len(rows)):
                writer.writerow(
                    ["" if isinstance(v, float) and math.isnan(v) else v
                     for v in (c[i].item() for c in cols.values())]
                )  # fmt: skip
    elif fmt == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise QueryError("Parquet needs pyarrow: pip install 'galaxy-edge[catalogue]'") from exc
        cols = columns(rows)
        arrays = {}
        for name, values in cols.items():
            if values.dtype.kind == "f" and name in _FLOAT:
                arrays[name] = pa.array(values, mask=np.isnan(values))  # real nulls here
            else:
                arrays[name] = pa.array(values)
        pq.write_table(pa.table(arrays), path)
    else:
        table = _table(rows)
        table.write(path, format="fits" if fmt == "fits" else "votable", overwrite=True)
    return fmt
