"""The attack registry (core.attacks.ATTACKS) and what is generated from it: ``run``, the [attack] config
keys and their checks, the CLI's choices and the Prepare form's fields. A small seeded CNN, so these run
without ../shared (the attacks themselves are checked against torchattacks in test_attacks.py)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from core import attacks
from core.attacks import ATTACKS, PARAMS, ParamError, fgsm, pgd
from core.config import AttackConfig, ConfigError, ExperimentConfig
from core.presets import PRESETS
from core.ui import prepare_form


def _tiny():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32, 10))
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return net.eval(), x, torch.arange(6) % 10


def test_todays_attacks_keep_todays_defaults():
    assert list(ATTACKS)[:2] == ["pgd", "fgsm"]
    pgd_defaults = {n: p.default for n, p in ATTACKS["pgd"].params.items()}
    assert pgd_defaults == {"eps": 8 / 255, "alpha": 2 / 255, "steps": 7, "random_start": False,
                            "early_stop": False}
    assert list(ATTACKS["fgsm"].params) == ["eps"] and ATTACKS["fgsm"].params["eps"].default == 8 / 255
    a = AttackConfig()
    assert (a.method, a.eps, a.alpha, a.steps, a.random_start, a.early_stop, a.precision) == (
        "pgd", 8 / 255, 2 / 255, 7, False, False, "auto")
    fields = [f.name for f in dataclasses.fields(AttackConfig)]
    assert fields[:6] == ["method", "eps", "alpha", "steps", "random_start", "early_stop"]
    assert fields[-1] == "precision" and set(fields) == {"method", "precision", *PARAMS}


def test_run_is_the_registered_function_with_the_configs_parameters():
    model, x, y = _tiny()
    assert torch.equal(attacks.run("pgd", model, x, y), pgd(model, x, y))
    assert torch.equal(attacks.run("pgd", model, x, y, steps=3, alpha=0.01, batch_size=4),
                       pgd(model, x, y, steps=3, alpha=0.01, batch_size=4))
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    assert torch.equal(attacks.run("pgd", model, x, y, random_start=True, generator=g()),
                       pgd(model, x, y, random_start=True, generator=g()))
    # fgsm takes no batch size or generator: run passes only the options a function accepts
    assert torch.equal(attacks.run("fgsm", model, x, y, eps=0.05, batch_size=2, generator=g()),
                       fgsm(model, x, y, eps=0.05))
    cfg = ExperimentConfig.from_dict({"attack": {"method": "fgsm", "eps": 0.05}})
    assert cfg.attack.params() == {"eps": 0.05}


@pytest.mark.parametrize("method, params, words", [
    ("pgd", {"eps": 2}, "pgd: eps = 2.0: expected a number from 0 to 1"),
    ("pgd", {"eps": float("nan")}, "eps = nan: expected a number from 0 to 1"),
    ("pgd", {"steps": 1.5}, "steps = 1.5: expected a whole number from 0 to 10000"),
    ("pgd", {"steps": True}, "steps = True: expected a whole number"),
    ("pgd", {"random_start": 1}, "random_start = 1: expected true or false"),
    ("pgd", {"alpha": 0}, "alpha = 0: expected a step > 0 for PGD with 7 steps"),
    ("pgd", {"momentum_typo": 1}, "pgd has no parameter(s) momentum_typo; its parameters: eps, alpha"),
    ("fgsm", {"steps": 3}, "fgsm has no parameter(s) steps; its parameters: eps"),
    ("cw", {}, "unknown attack 'cw'; attacks: pgd, fgsm"),
])
def test_bad_parameters_get_the_registrys_words(method, params, words):
    model, x, y = _tiny()
    with pytest.raises(ParamError) as e:
        attacks.run(method, model, x, y, **params)
    assert words in str(e.value)


def test_config_keys_and_checks_come_from_the_registry():
    # a key a file leaves out gets the chosen attack's default: for pgd and fgsm, today's values
    for method in ("pgd", "fgsm"):
        a = ExperimentConfig.from_dict({"attack": {"method": method}}).attack
        assert a == dataclasses.replace(AttackConfig(), method=method)
    with pytest.raises(ConfigError, match=r"^\[attack\] steps = 1.5: expected a whole number from 0 to 10000 "
                       r"\(PGD iterations; the paper: 7\) \(a whole number has no decimal point\)$"):
        ExperimentConfig.from_dict({"attack": {"steps": 1.5}})
    with pytest.raises(ConfigError, match=r"^\[attack\] method = 'cw': expected one of 'pgd', 'fgsm'"):
        ExperimentConfig.from_dict({"attack": {"method": "cw"}})
    # parameters the chosen attack does not use are still checked (by their first declaration)
    with pytest.raises(ConfigError, match=r"^\[attack\] alpha = 2: expected a number from 0 to 1"):
        ExperimentConfig.from_dict({"attack": {"method": "fgsm", "alpha": 2}})


def test_the_cli_offers_the_registered_attacks(capsys, tmp_path):
    from core.cli import main
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    shown = capsys.readouterr().out
    for a in ATTACKS.values():
        assert f"  {a.name}: {a.label}." in shown
        assert all(f"    {p.name}" in shown for p in a.params.values())
    with pytest.raises(SystemExit) as e:
        main(["--cache", str(tmp_path), "prepare", "--preset", "demo", "--attack", "cw"])
    assert e.value.code == 2 and "invalid choice: 'cw'" in capsys.readouterr().err
    # --attack sets [attack] method (checked with the rest of the config before any work)
    assert main(["--cache", str(tmp_path), "prepare", "--preset", "demo", "--attack", "fgsm",
                 "--set", "attack.eps=2"]) == 2
    assert "[attack] eps = 2: expected a number from 0 to 1" in capsys.readouterr().err


def test_prepare_form_fields_round_trip_every_presets_attack():
    assert prepare_form.attack_fields() == ("prepare_method", *(f"prepare_{n}" for n in PARAMS))
    for name, cfg in PRESETS.items():
        shown = prepare_form.attack_form_values(cfg.attack)
        assert shown["prepare_eps"] == round(cfg.attack.eps * 255, 2)
        assert shown["prepare_steps"] == cfg.attack.steps
        back = prepare_form.build_config(name, prepare_form.attack_config_values(shown)).attack
        assert back.method == cfg.attack.method
        for key in PARAMS:
            assert getattr(back, key) == pytest.approx(getattr(cfg.attack, key), rel=1e-3), (name, key)
    assert prepare_form.attack_widget_range(PARAMS["eps"]) == (0.0, 255.0)
    assert prepare_form.attack_widget_range(PARAMS["steps"]) == (0, attacks.MAX_STEPS)
    assert all(a.help in prepare_form.METHOD_HELP for a in ATTACKS.values())
