import pytest

from edge_agent.contract.classes import CLASS_NAMES, CLASSES, NUM_CLASSES, class_id, class_name
from edge_agent.contract.errors import UnknownClassError


def test_official_order_is_the_h5_ans_order() -> None:
    # Galaxy10 DECaLS README: ans 0..9. The alphabetical order of the paper's Table 1 differs.
    assert CLASS_NAMES[0] == "Disturbed"
    assert CLASS_NAMES[2] == "Round Smooth"
    assert CLASS_NAMES[5] == "Barred Spiral"
    assert CLASS_NAMES[9] == "Edge-on with Bulge"
    assert NUM_CLASSES == 10
    assert list(CLASS_NAMES) != sorted(CLASS_NAMES)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("barred-spiral", 5),
        ("Barred Spiral", 5),
        ("BARRED_SPIRAL", 5),
        ("in-between-round-smooth", 3),
        ("edge-on-without-bulge", 8),
        ("edge-on-with-bulge", 9),
        ("Edge-on with Bulge", 9),
        ("unbarred tight spiral", 6),
    ],
)
def test_class_id_accepts_names_and_folder_slugs(name: str, expected: int) -> None:
    assert class_id(name) == expected


def test_every_class_round_trips_through_its_slug() -> None:
    for c in CLASSES:
        assert class_id(c.slug) == c.id
        assert class_name(c.id) == c.name


@pytest.mark.parametrize("bad", ["spiral", "", "Barred Spiral Galaxies", "edge-on"])
def test_unknown_names_raise_with_the_accepted_list(bad: str) -> None:
    with pytest.raises(UnknownClassError, match="expected one of"):
        class_id(bad)


@pytest.mark.parametrize("bad", [-1, 10, 3.0])
def test_class_name_rejects_ids_outside_range(bad: object) -> None:
    with pytest.raises(UnknownClassError):
        class_name(bad)  # type: ignore[arg-type]
