"""The Prepare form's pure helpers: a preset's values, read back as the form sends them, give the preset."""
import pytest

from core.config import ConfigError
from core.presets import PRESETS
from core.ui import prepare_form


@pytest.mark.parametrize("name", list(PRESETS))
def test_a_presets_form_values_make_the_preset_again(name, tmp_path):
    values = prepare_form.preset_values(name, tmp_path)
    assert values["prepare_id"] == name  # free in an empty cache
    preset = PRESETS[name]
    cfg = prepare_form.build_config(name, prepare_form.config_values(values, preset.model.num_classes))
    assert cfg.model == preset.model and cfg.attack == preset.attack
    assert (cfg.data.source, cfg.data.classes, cfg.data.per_class) == \
        (preset.data.source, preset.data.classes, preset.data.per_class)


def test_the_custom_start_and_a_taken_id(tmp_path):
    (tmp_path / "my-experiment").mkdir()
    values = prepare_form.preset_values(prepare_form.CUSTOM, tmp_path)
    assert values["prepare_id"] != "my-experiment" and values["prepare_source"] == "image_folder"
    assert values["prepare_mean"] == "0.485, 0.456, 0.406"


@pytest.mark.parametrize("text, expected", [("0.5", (0.5,)), ("0.485, 0.456;0.406", (0.485, 0.456, 0.406)),
                                            (" 1 ,", (1.0,))])
def test_normalization_numbers_are_read_back(text, expected):
    assert prepare_form.parse_floats(text, "mean") == expected
    assert prepare_form.parse_floats(prepare_form.numbers(expected), "mean") == expected


@pytest.mark.parametrize("text", ["", " , ", "a, b", "0.5, x"])
def test_unreadable_normalization_is_a_clear_error(text):
    with pytest.raises(ConfigError, match="one per channel separated by commas"):
        prepare_form.parse_floats(text, "std")
