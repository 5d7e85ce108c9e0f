"""MI-FGSM (Dong et al. 2018), the attack added through the registry alone (core/attacks.py): against
torchattacks' MIFGSM on the real ResNet20 and 64 real CIFAR-10 test images, against the paper's formula
written line by line on a small seeded CNN, its invariants, and its parameters' errors in ``run``, a
config, the CLI and the Prepare form."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchattacks
from streamlit.testing.v1 import AppTest

from core import attacks
from core.attacks import ATTACKS, ParamError, mi_fgsm
from core.config import ConfigError, ExperimentConfig
from core.data import cifar10
from core.ui import prepare_form
from tests.helpers import resnet20

EPS = 8 / 255


@pytest.fixture(scope="module")
def cifar(cifar_root, models_dir):
    # 64 real test images (the first 7 per class, then the first 64): torchattacks averages the loss over
    # the batch, and 1/64 scales the gradient exactly where 1/70 rounds it, which can flip the sign of a
    # momentum element that nearly cancels (measured: one of 70 images then takes another path)
    ds = cifar10(cifar_root, per_class=7)
    return resnet20(models_dir), ds.get(np.arange(64)), torch.as_tensor(ds.labels[:64])


@pytest.mark.parametrize("alpha", [None, 2 / 255])  # the default ε/steps, and torchattacks' default
def test_mi_fgsm_equals_torchattacks_on_resnet20(cifar, alpha):
    """torchattacks normalizes by mean |∇| (‖∇‖₁ / pixels) and averages the loss over the batch: both
    positive per-image scales of the paper's g, so the sign steps, and the images, are the same."""
    model, x, y = cifar
    assert len(x) >= 64
    ours = mi_fgsm(model, x, y, eps=EPS, alpha=alpha, steps=10, momentum=1.0)
    ref = torchattacks.MIFGSM(model, eps=EPS, alpha=EPS / 10 if alpha is None else alpha, steps=10,
                              decay=1.0)(x, y)
    assert (ours - ref).abs().max() <= 1e-5
    assert (ours - x).abs().max() <= EPS + 1e-6 and ours.min() >= 0 and ours.max() <= 1
    with torch.no_grad():
        assert (model(ours).argmax(1) != y).float().mean() >= 0.9  # 8/255, 10 steps: nearly all fooled
    assert torch.equal(attacks.run("mi-fgsm", model, x, y, batch_size=32, **({} if alpha is None else
                                                                              {"alpha": alpha})), ours)


def _tiny():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32, 10))
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    x[0, :, :2] = 1.0  # pixels at the range's end: the clamp must act there
    return net.eval(), x, torch.arange(6) % 10


def _reference(model, x, y, eps, alpha, steps, mu):
    """Dong et al.'s Algorithm 1, one image at a time: g ← μ·g + ∇/‖∇‖₁; x ← clip(x + α·sign(g))."""
    out = []
    for i in range(len(x)):
        xi, adv, g = x[i:i + 1], x[i:i + 1].clone(), torch.zeros_like(x[i:i + 1])
        for _ in range(steps):
            adv.requires_grad_(True)
            grad, = torch.autograd.grad(F.cross_entropy(model(adv), y[i:i + 1]), adv)
            g = mu * g + grad / grad.abs().sum()
            adv = adv.detach() + alpha * g.sign()
            adv = torch.min(torch.max(adv, xi - eps), xi + eps).clamp(0, 1)
        out.append(adv)
    return torch.cat(out)


@pytest.mark.parametrize("mu", [0.0, 0.5, 1.0])
def test_mi_fgsm_is_the_papers_algorithm(mu):
    model, x, y = _tiny()
    ours = mi_fgsm(model, x, y, eps=0.05, alpha=0.01, steps=6, momentum=mu)
    assert (ours - _reference(model, x, y, 0.05, 0.01, 6, mu)).abs().max() <= 1e-6
    assert torch.equal(mi_fgsm(model, x, y, eps=0.05, steps=5), mi_fgsm(model, x, y, eps=0.05, alpha=0.01,
                                                                      steps=5))  # α = ε/steps


def test_bad_parameters_get_clear_errors():
    model, x, y = _tiny()
    for params, words in [({"eps": 0}, "mi-fgsm: eps = 0.0: expected a number > 0 and at most 1"),
                          ({"eps": -0.1}, "eps = -0.1: expected a number > 0"),
                          ({"steps": 0}, "steps = 0: expected a whole number from 1 to 10000"),
                          ({"momentum": -1}, "momentum = -1.0: expected a number from 0 to 10"),
                          ({"alpha": 0}, "alpha = 0.0: expected a number > 0"),
                          ({"random_start": True}, "mi-fgsm has no parameter(s) random_start")]:
        with pytest.raises(ParamError) as e:
            attacks.run("mi-fgsm", model, x, y, **params)
        assert words in str(e.value)
    for kw in ({"eps": 0.0}, {"steps": 0}):
        with pytest.raises(ValueError, match="mi-fgsm needs eps > 0, steps >= 1"):
            mi_fgsm(model, x, y, **kw)


def test_usable_from_a_config_the_cli_and_the_prepare_form(tmp_path, capsys):
    toml = tmp_path / "mi.toml"
    toml.write_text('[attack]\nmethod = "mi-fgsm"\n')
    a = ExperimentConfig.from_toml(toml).attack  # left-out keys: the attack's defaults
    assert (a.method, a.eps, a.alpha, a.steps, a.momentum) == ("mi-fgsm", EPS, EPS / 10, 10, 1.0)
    assert a.params() == {"eps": EPS, "alpha": EPS / 10, "steps": 10, "momentum": 1.0}
    toml.write_text('[attack]\nmethod = "mi-fgsm"\neps = 0.1\nsteps = 4\nmomentum = 0.5\n')
    a = ExperimentConfig.from_toml(toml).attack
    assert (a.alpha, a.momentum) == (0.1 / 4, 0.5)
    assert ExperimentConfig.from_dict(ExperimentConfig.from_toml(toml).to_dict()).attack == a  # round trip
    for bad, words in [("steps = 0", "[attack] steps = 0: expected a whole number from 1 to 10000"),
                       ("eps = 0", "[attack] eps = 0: expected a number > 0 and at most 1")]:
        toml.write_text(f'[attack]\nmethod = "mi-fgsm"\n{bad}\n')
        with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
            ExperimentConfig.from_toml(toml)

    from core.cli import main
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    assert "  mi-fgsm: MI-FGSM (momentum)." in capsys.readouterr().out
    assert main(["--cache", str(tmp_path), "prepare", "--preset", "demo", "--attack", "mi-fgsm",
                 "--set", "attack.steps=0"]) == 2  # parsed, then the config's check names the key
    assert "[attack] steps = 0: expected a whole number from 1 to 10000" in capsys.readouterr().err

    assert "prepare_momentum" in prepare_form.attack_fields() and "MI-FGSM" in prepare_form.METHOD_HELP
    shown = prepare_form.attack_form_values(ExperimentConfig.from_dict({"attack": {"method": "mi-fgsm"}})
                                            .attack)
    cfg = prepare_form.build_config("demo", prepare_form.attack_config_values(shown))
    assert cfg.attack.method == "mi-fgsm" and cfg.attack.momentum == 1.0 and cfg.attack.steps == 10
    assert set(ATTACKS["mi-fgsm"].params) == {"eps", "alpha", "steps", "momentum"}


def test_the_prepare_page_offers_it(tmp_path, monkeypatch):
    monkeypatch.setenv("NVE_CACHE", str(tmp_path))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "app.py"), default_timeout=60)
    at.switch_page("pages/prepare.py")
    at.run()
    assert "mi-fgsm" in at.radio(key="prepare_method").options or any(
        "MI-FGSM" in o for o in at.radio(key="prepare_method").options)
    assert at.number_input(key="prepare_momentum").disabled  # the preset's PGD has no momentum
    at.radio(key="prepare_method").set_value("mi-fgsm").run()
    assert not at.exception
    assert not at.number_input(key="prepare_momentum").disabled
    assert at.number_input(key="prepare_momentum").value == 1.0
    assert at.checkbox(key="prepare_random_start").disabled and at.checkbox(key="prepare_early_stop").disabled
    # its own defaults, not the preset's PGD numbers: 10 steps of ε/10, the preset's ε kept
    eps = at.number_input(key="prepare_eps").value
    assert at.number_input(key="prepare_steps").value == 10
    assert at.number_input(key="prepare_alpha").value == pytest.approx(eps / 10)
    at.radio(key="prepare_method").set_value("pgd").run()
    assert (at.number_input(key="prepare_steps").value, at.number_input(key="prepare_alpha").value) == (7, 2)
    assert at.number_input(key="prepare_eps").value == eps


def test_choosing_another_method_in_an_override_gives_its_own_defaults():
    """``--attack NAME`` (an ``attack.method`` override) on a preset of another attack: that attack's own
    defaults, the preset's ε kept; later overrides still apply."""
    from core.presets import PRESETS, preset
    demo_eps = PRESETS["demo"].attack.eps
    a = preset("demo", ['attack.method="mi-fgsm"']).attack
    assert (a.method, a.eps, a.steps, a.alpha, a.momentum) == ("mi-fgsm", demo_eps, 10, demo_eps / 10, 1.0)
    a = preset("demo", ['attack.method="mi-fgsm"', "attack.steps=4"]).attack
    assert (a.steps, a.alpha) == (4, demo_eps / 4)
    same = preset("demo", ['attack.method="pgd"']).attack  # the method it has: nothing is reset
    assert same == PRESETS["demo"].attack


def test_prepare_writes_an_mi_fgsm_store(cifar_root, models_dir, tmp_path):
    from core.pipeline import prepare
    from core.presets import preset
    from core.store import Store
    cfg = preset("cifar10-resnet56", [f'data.root="{cifar_root}"', "data.per_class=3",
                                      "model.arch=\"resnet20_cifar\"",
                                      f'model.checkpoint="{models_dir / "resnet20-12fca82f.th"}"',
                                      "attack.method=\"mi-fgsm\"", "attack.alpha=0.003", "attack.steps=5",
                                      "attack.momentum=0.9", "prepare.tsne_perplexity=5"])
    store = Store(prepare(cfg, "mi", cache_dir=tmp_path, show_bars=False))
    a = store.manifest["config"]["attack"]
    assert (a["method"], a["steps"], a["alpha"], a["momentum"]) == ("mi-fgsm", 5, 0.003, 0.9)
    assert store.counts["n_success"] > 0
    assert (store.pairs.linf <= cfg.attack.eps + 1e-6).all()
