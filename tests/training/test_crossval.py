"""Repeated stratified k-fold: disjoint stratified folds, paired comparison that sees real gains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from training_testkit import tiny_config_values

from training import crossval
from training.cli import main
from training.crossval import (
    Fold,
    Variant,
    compare_paired,
    deep_merge,
    fold_values,
    run_crossval,
    stratified_folds,
)
from training.errors import UsageError


def _labels() -> np.ndarray:
    counts = {0: 23, 3: 17, 7: 11, 9: 31}
    labels = np.concatenate([np.full(n, c) for c, n in counts.items()])
    return np.random.default_rng(0).permutation(labels)


def test_folds_are_disjoint_cover_everything_and_are_stratified() -> None:
    labels = _labels()
    plan = stratified_folds(labels, folds=5, repeats=3, seed=1, val_fraction=0.1)
    assert len(plan) == 15 and len({f.name for f in plan}) == 15
    for r in range(3):
        tests = [f.test for f in plan if f.repeat == r]
        joined = np.concatenate(tests)
        assert len(joined) == len(labels) and len(np.unique(joined)) == len(labels)
        for cls in np.unique(labels):
            per_fold = [int((labels[t] == cls).sum()) for t in tests]
            assert max(per_fold) - min(per_fold) <= 1, (cls, per_fold)
    for f in plan:
        parts = [set(f.train.tolist()), set(f.val.tolist()), set(f.test.tolist())]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
        assert len(f.train) + len(f.val) + len(f.test) == len(labels)
        assert set(np.unique(labels[f.val])) == set(np.unique(labels))  # every class validated
    # Repeats reshuffle: the first fold of each repeat differs.
    firsts = [f.test for f in plan if f.index == 0]
    assert not np.array_equal(firsts[0], firsts[1])
    # Same seed, same folds.
    again = stratified_folds(labels, folds=5, repeats=3, seed=1, val_fraction=0.1)
    assert all(np.array_equal(a.test, b.test) for a, b in zip(plan, again, strict=True))


def test_too_few_images_in_a_class_for_the_folds_is_a_usage_error() -> None:
    labels = np.array([0] * 10 + [1] * 3)
    with pytest.raises(UsageError, match="only 3 images"):
        stratified_folds(labels, folds=4)
    with pytest.raises(UsageError):
        stratified_folds(labels, folds=1)


def test_the_comparison_flags_a_real_gain_and_not_a_null_one() -> None:
    rng = np.random.default_rng(3)
    # Fold-to-fold spread of 3 points, shared by both configs on the same fold (paired).
    base = 0.55 + rng.normal(0, 0.03, 15)
    better = base + 0.04 + rng.normal(0, 0.01, 15)
    same = base + rng.normal(0, 0.01, 15)
    worse = base - 0.04 + rng.normal(0, 0.01, 15)
    assert compare_paired(base, better, 0.2).verdict == "helps"
    assert compare_paired(base, same, 0.2).verdict == "within noise"
    assert compare_paired(base, worse, 0.2).verdict == "hurts"
    assert compare_paired(base[:1], better[:1], 0.2).verdict == "too few runs"


def test_null_differences_are_rarely_called_a_gain() -> None:
    """Over many synthetic null comparisons, 'helps' comes up at most about 2.5% of the time."""
    rng = np.random.default_rng(4)
    calls = 0
    trials = 400
    for _ in range(trials):
        base = 0.5 + rng.normal(0, 0.03, 10)
        calls += compare_paired(base, base + rng.normal(0, 0.02, 10), 0.2).verdict == "helps"
    assert calls / trials < 0.05


def test_the_correction_widens_the_interval_over_the_naive_one() -> None:
    rng = np.random.default_rng(5)
    base = rng.normal(0.5, 0.03, 10)
    c = compare_paired(base, base + rng.normal(0.01, 0.02, 10), 0.2)
    naive = c.std_diff / np.sqrt(10)
    assert c.corrected_se == pytest.approx(c.std_diff * np.sqrt(1 / 10 + 0.25))
    assert c.corrected_se > naive


def test_fold_values_give_each_fold_its_dir_seed_and_teachers() -> None:
    fold = Fold(1, 2, np.arange(3), np.arange(3, 4), np.arange(4, 6))
    base = {"data": "d", "seed": 5, "regularise": {"ema_decay": 0.99, "mixup_alpha": 0.2}}
    variant = Variant(
        "kd",
        {
            "regularise": {"mixup_alpha": 0.0},
            "distill": {"teachers": ["/t/{fold}", "{out}/big/{fold}"]},
        },
    )
    values = fold_values(base, variant, fold, Path("/o"))
    assert values["out"] == "/o/kd/r1f2"
    assert values["seed"] == 5 + 1000 + 2
    assert values["regularise"] == {"ema_decay": 0.99, "mixup_alpha": 0.0}  # merged, not replaced
    assert values["distill"]["teachers"] == ["/t/r1f2", "/o/big/r1f2"]
    assert deep_merge({"a": {"b": 1}}, {"a": 2}) == {"a": 2}
    # Command-line options win over the base and the variant (a full recipe file as a variant).
    recipe = Variant("full", {"epochs": 200, "image_size": 256, "preprocess": {"input_size": 256}})
    forced = fold_values(base, recipe, fold, Path("/o"), {"epochs": 3, "image_size": 64})
    assert forced["epochs"] == 3 and forced["image_size"] == 64
    assert forced["preprocess"]["input_size"] == 64


def test_crossval_runs_every_variant_on_the_same_folds_and_reuses_finished_ones(
    easy_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tiny_config_values(easy_folder, tmp_path / "unused", epochs=1, val_fraction=0.2)
    del base["out"]
    out = tmp_path / "cv"
    variants = [Variant("base", {}), Variant("smooth", {"label_smoothing": 0.1})]
    first = run_crossval(base, variants, out, folds=2, seed=0, only=["base"], echo=lambda _: None)
    assert set(first["runs"]["base"]) == {"r0f0", "r0f1"} and first["runs"]["smooth"] == {}
    assert not (out / "smooth").exists()
    assert {c["verdict"] for c in first["comparisons"]} == {"too few runs"}
    doc = run_crossval(base, variants, out, folds=2, repeats=1, seed=0, echo=lambda _: None)
    for f in ("r0f0", "r0f1"):  # the base folds were reused, not trained again
        assert doc["runs"]["base"][f]["accuracy"] == first["runs"]["base"][f]["accuracy"]
        assert doc["runs"]["base"][f]["seconds"] < 5
    assert set(doc["runs"]["base"]) == set(doc["runs"]["smooth"]) == {"r0f0", "r0f1"}
    tests = []
    for fold in ("r0f0", "r0f1"):
        a = json.loads((out / "base" / fold / "split.json").read_text())
        b = json.loads((out / "smooth" / fold / "split.json").read_text())
        assert a["test"] == b["test"] and a["train"] == b["train"]  # paired: the same images
        tests.append(set(a["test"]))
    assert not (tests[0] & tests[1]) and len(tests[0] | tests[1]) == 120
    assert doc["summary"]["base"]["runs"] == 2
    assert {c["metric"] for c in doc["comparisons"]} == {"accuracy", "macro_f1"}
    finished = json.loads((out / "smooth" / "r0f1" / "metrics.json").read_text())
    report = (out / "crossval.md").read_text()
    assert "| smooth | accuracy | 2 |" in report and "±" in report

    (out / "smooth" / "r0f1" / "metrics.json").unlink()  # as if cut mid-fold
    partial = run_crossval(
        base, variants, out, folds=2, seed=0, report_only=True, echo=lambda _: None
    )
    assert set(partial["runs"]["smooth"]) == {"r0f0"}
    assert partial["summary"]["smooth"]["runs"] == 1
    assert not (out / "smooth" / "r0f1" / "metrics.json").exists()  # not trained again
    (out / "smooth" / "r0f1" / "metrics.json").write_text(json.dumps(finished))

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr("training.train.train", no_training)
    again = run_crossval(base, variants, out, folds=2, repeats=1, seed=0, echo=lambda _: None)
    assert again["runs"]["smooth"]["r0f1"]["accuracy"] == doc["runs"]["smooth"]["r0f1"]["accuracy"]


def test_cli_refuses_a_bad_variant_before_training(
    easy_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["crossval", "--data", str(easy_folder), "--out", str(tmp_path / "cv"),
         "--variant", 'typo={"regularise": {"ema_dacay": 0.9}}', "--device", "cpu"]
    )  # fmt: skip
    assert code == 2
    assert "variant typo: regularise.ema_dacay" in capsys.readouterr().err
    assert not (tmp_path / "cv" / "base").exists()
    code = main(["crossval", "--data", str(easy_folder), "--out", str(tmp_path), "--variant", "x"])
    assert code == 2
    code = main(["crossval", "--data", str(easy_folder), "--out", str(tmp_path), "--only", "nope"])
    assert code == 2
    assert "--only nope: no such variant" in capsys.readouterr().err


def test_parse_variant_reads_json_and_files(tmp_path: Path) -> None:
    path = tmp_path / "v.json"
    path.write_text('{"epochs": 3}')
    assert crossval.parse_variant(f"a={path}") == Variant("a", {"epochs": 3})
    assert crossval.parse_variant('b={"lr": 0.001}') == Variant("b", {"lr": 0.001})
