"""The wide-field settings: strict, described, checked against each other."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edge_agent.config import ConfigError, parse_config
from edge_agent.fields.settings import FieldsConfig

BASE = "device_id: d\nbundle: /b\nsources:\n  - uri: dir:///in\n    mode: fields\n"


def test_mode_and_settings_parse() -> None:
    cfg = parse_config(BASE + "fields:\n  detect_sigma: 3\n  band_order: zrg\n")
    assert cfg.sources[0].mode == "fields" and cfg.fields.detect_sigma == 3.0
    assert parse_config(BASE.replace("    mode: fields\n", "")).sources[0].mode == "stamp"


def test_a_typo_names_its_key_and_line() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + "fields:\n  detect_sigmaa: 3\n")
    assert any(":7: fields.detect_sigmaa: unknown key" in p for p in err.value.problems)
    with pytest.raises(ConfigError) as err:
        parse_config(BASE.replace("mode: fields", "mode: wide"))
    assert any("sources.0.mode" in p for p in err.value.problems)


def test_settings_that_contradict_each_other_are_refused() -> None:
    with pytest.raises(ValidationError, match="min_side_px"):
        FieldsConfig(min_side_px=512, max_side_px=256)
    with pytest.raises(ValidationError, match="sharp_r50_factor"):
        FieldsConfig(sharp_r50_factor=2.0, star_r50_factor=1.5)


def test_every_setting_is_described() -> None:
    missing = [n for n, f in FieldsConfig.model_fields.items() if not f.description]
    assert missing == []
