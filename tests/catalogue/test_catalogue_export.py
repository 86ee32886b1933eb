"""Exports read back with the readers astronomers use: astropy (FITS, VOTable), pyarrow, csv."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io.votable import parse_single_table
from astropy.table import Table
from catalogue_testkit import classification, to_bytes

from catalogue.cli import main
from catalogue.errors import QueryError
from catalogue.export import export, format_for
from catalogue.messages import parse_message
from catalogue.store import Query, open_store
from edge_agent.contract.classes import CLASS_NAMES

P = "galaxy-edge"


@pytest.fixture
def rows(tmp_path: Path) -> list[dict[str, object]]:
    store = open_store(f"sqlite:///{tmp_path / 'cat.sqlite3'}")
    recs = [
        parse_message(
            f"{P}/a/classifications",
            to_bytes(
                classification("a", 5, sky={"ra": 150.5, "dec": -2.25}, pixel={"x": 10, "y": 20})
            ),
            P,
        ),
        parse_message(f"{P}/a/classifications", to_bytes(classification("a", 6)), P),
    ]
    store.write(recs)
    out = store.query(Query())
    store.close()
    return out


def test_fits_binary_table(rows: list[dict[str, object]], tmp_path: Path) -> None:
    path = tmp_path / "out.fits"
    assert export(rows, path) == "fits"
    t = Table.read(path)
    assert list(t["label"]) == [CLASS_NAMES[5], CLASS_NAMES[6]]
    ra = np.ma.filled(t["ra"], np.nan)  # astropy masks NaN on reading
    assert t["ra"].unit == "deg" and ra[0] == 150.5 and math.isnan(ra[1])
    assert t["p_5"][0] == pytest.approx(0.8) and "Barred Spiral" in t["p_5"].description
    assert (
        t["class_id"].dtype.kind == "i"
        and t["class_id"].dtype.itemsize == 2
        and bool(t["uncertain"][0]) is False
    )


def test_votable_carries_units_and_ucds(rows: list[dict[str, object]], tmp_path: Path) -> None:
    path = tmp_path / "out.vot"
    export(rows, path)
    table = parse_single_table(str(path))
    ucds = {f.name: f.ucd for f in table.fields}
    assert ucds["ra"] == "pos.eq.ra;meta.main" and ucds["dec"] == "pos.eq.dec;meta.main"
    t = table.to_table()
    assert t["dec"][0] == -2.25 and t["x"][0] == 10.0


def test_parquet_has_real_nulls(rows: list[dict[str, object]], tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    export(rows, path)
    t = pq.read_table(path).to_pydict()
    assert t["ra"] == [150.5, None] and t["device"] == ["a", "a"]
    assert t["p_6"][1] == pytest.approx(0.8)


def test_csv(rows: list[dict[str, object]], tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    export(rows, path)
    with path.open() as fh:
        got = list(csv.DictReader(fh))
    assert got[0]["ra"] == "150.5" and got[1]["ra"] == ""
    assert got[1]["label"] == CLASS_NAMES[6]


def test_format_is_taken_from_the_suffix_or_refused(tmp_path: Path) -> None:
    assert format_for(tmp_path / "x.xml", None) == "votable"
    with pytest.raises(QueryError, match="pass --format"):
        format_for(tmp_path / "x.txt", None)


def test_query_and_export_commands(
    rows: list[dict[str, object]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = f"sqlite:///{tmp_path / 'cat.sqlite3'}"
    assert main(["query", "--database", db, "--cone", "150.5", "-2.25", "0.001"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["frame_ref"] for line in lines] == ["frame-00005.png"]
    assert (
        main(["query", "--database", db, "--label", CLASS_NAMES[6], "--min-confidence", "0.5"]) == 0
    )
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert main(["export", "--database", db, str(tmp_path / "all.fits")]) == 0
    assert len(Table.read(tmp_path / "all.fits")) == 2
    assert main(["query", "--database", db, "--since", "yesterday"]) == 2
    assert "not an ISO 8601 time" in capsys.readouterr().err
    assert main(["query", "--database", db, "--cone", "150", "2", "0"]) == 2
