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


def test_a_model_file_and_its_card_are_uploaded_as_a_pair_of_their_own(tmp_path):
    """An uploaded .pt2 is kept once it loads; its card, once it passes the card's checks, is kept with a
    model file of the pair's own (uploads are shared by content: another user's upload of the same model,
    with another card or none, must not read it), and a bad card is never kept."""
    pytest.importorskip("core.exported_programs", reason="core.exported_programs (.pt2 loading) is missing")
    import torch

    from core import model_cards
    from core.models import ModelError
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    torch.export.save(torch.export.export(net, (torch.rand(1, 3, 16, 16),)), tmp_path / "net.pt2")
    path = prepare_form.save_upload((tmp_path / "net.pt2").read_bytes(), "net.pt2", tmp_path / "cache")
    assert path.suffix == ".pt2" and path.parent.name == prepare_form.UPLOADS
    with pytest.raises(ModelError, match="model card net.json: num_classes = 1"):
        prepare_form.save_card(b'{"num_classes": 1}', "net.json", path)
    assert model_cards.read_card(path) is None
    pair = prepare_form.save_card(b'{"mean": [0.5], "std": [0.5]}', "net.json", path)
    assert model_cards.read_card(pair).mean == (0.5,) and model_cards.read_card(path) is None
    assert pair.read_bytes() == path.read_bytes() and pair.suffix == ".pt2"
    other = prepare_form.save_card(b'{"mean": [0.2], "std": [0.3]}', "mine.json", path)
    assert other != pair and model_cards.read_card(pair).mean == (0.5,)  # neither overwrites the other
    assert prepare_form.save_card(b'{"mean": [0.5], "std": [0.5]}', "again.json", path) == pair
    with pytest.raises(ModelError, match="net.pt2"):  # the user's name, never the temporary path
        prepare_form.save_upload(b"PK\x03\x04 not a program", "net.pt2", tmp_path / "cache")
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        [path.name, pair.name, f"{pair.stem}.json", other.name, f"{other.stem}.json"])


@pytest.mark.parametrize("head, unavailable", [("linear", False), ("conv1x1", False), ("other", True)])
def test_what_was_found_says_when_activation_x_weight_is_unavailable(head, unavailable):
    s = prepare_form.ModelSummary("layer4", 512, (4, 4), head, 10, (3, 32, 32), False, (0.5,), (0.5,),
                                  {"mean": "card", "num_classes": "card"}, None)
    lines = prepare_form.summary_lines(s)
    assert lines[0] == "Analysed layer: layer4 (512 neurons, 4×4 maps)"
    assert lines[1].startswith(f"Head: {head} (")
    assert "Classes: 10 (from the model's card)" in lines and "(from the model's card)" in lines[4]
    assert any("activation×weight measures will not be available" in x for x in lines) == unavailable


def test_a_cards_class_names_are_compared_with_the_datasets():
    from core import model_cards
    card = model_cards.card_from_dict({"class_names": ["cat", "dog", "eel"]}, "card")
    s = prepare_form.ModelSummary("f", 8, (2, 2), "linear", 3, (3, 32, 32), False, (0.0,), (1.0,), {}, card)
    assert prepare_form.class_names_problem(s, ["cat", "dog", "eel"]) is None
    assert "in another order" in prepare_form.class_names_problem(s, ["dog", "cat", "eel"])
    other = prepare_form.class_names_problem(s, ["cat", "dog", "fox"])
    assert "does not name the dataset's class(es) fox" in other


@pytest.mark.parametrize("path", ["/models/net.pt2", "/models/net.ONNX"])
def test_a_model_file_path_wins_over_the_architecture_menu(tmp_path, path):
    """A user who types a .pt2/.onnx path but leaves the menu at its built-in default gets the file's own
    architecture and input channels, not "leave [model] arch out" (a config's words on a page without a
    config) or the channels of the preset the form started from."""
    values = prepare_form.preset_values("demo", tmp_path) | {"prepare_ckpt_path": path}  # 1 channel
    assert values["prepare_arch"] not in (prepare_form.FROM_FILE, prepare_form.TIMM)
    assert values["prepare_channels"] == 1
    got = prepare_form.config_values(values, 10)
    assert got["model.arch"] is None and got["model.in_channels"] is None  # the file's first convolution
    assert "carries its own architecture" in prepare_form.own_file_note(values)
    weights = values | {"prepare_ckpt_path": "/models/net.pth"}
    assert prepare_form.config_values(weights, 10)["model.arch"] == values["prepare_arch"]
    assert prepare_form.own_file_note(weights) is None
