import pytest
import torch
import torchattacks

from core.attacks import fgsm, pgd
from tests.helpers import lossless20 as load_lossless20
from tests.helpers import resnet20, shared_model

EPS, ALPHA = 8 / 255, 2 / 255


@pytest.fixture(scope="module")
def pair(lossless20, models_dir):
    x, y = load_lossless20(lossless20)
    return shared_model("cifar10-resnet18", models_dir), x, y


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_pgd_invariants(pair, precision):
    model, x, y = pair
    x0 = x.clone()
    adv = pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=7, precision=precision)
    assert torch.equal(x, x0), "the input must not be modified"
    assert (adv - x).abs().max() <= EPS + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert adv.shape == x.shape and adv.dtype == x.dtype
    with torch.no_grad():
        fooled = (model(adv).argmax(1) != y).float().mean()
    assert fooled >= 0.8, f"PGD-7 at 8/255 should fool most of the 20 images, fooled {fooled:.2f}"


def test_eps_zero_gives_clean_accuracy(pair):
    model, x, y = pair
    adv = pgd(model, x, y, eps=0.0, alpha=ALPHA, steps=7)
    assert torch.equal(adv, x)
    with torch.no_grad():
        assert torch.equal(model(adv).argmax(1), model(x).argmax(1))


@pytest.mark.parametrize("which", ["resnet18", "resnet20"])
def test_pgd_matches_torchattacks(pair, models_dir, which):
    model, x, y = pair
    if which == "resnet20":
        model = resnet20(models_dir)
    ours = pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=7, random_start=False)
    ref = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=7, random_start=False)(x, y)
    assert (ours - ref).abs().max() <= 1e-5


def test_pgd_batching_does_not_change_result(pair):
    model, x, y = pair
    whole = pgd(model, x, y, steps=3)
    chunked = pgd(model, x, y, steps=3, batch_size=7)
    assert (whole - chunked).abs().max() <= 1e-6


def test_fgsm_matches_torchattacks(pair):
    model, x, y = pair
    ours = fgsm(model, x, y, eps=EPS)
    ref = torchattacks.FGSM(model, eps=EPS)(x, y)
    assert (ours - ref).abs().max() <= 1e-5


def test_targeted_pgd_reaches_target(pair):
    model, x, y = pair
    target = (y + 1) % 10
    adv = pgd(model, x, target, eps=EPS, alpha=ALPHA, steps=20, targeted=True)
    with torch.no_grad():
        hit = (model(adv).argmax(1) == target).float().mean()
    assert hit >= 0.7
    assert (adv - x).abs().max() <= EPS + 1e-6


def test_random_start_stays_in_ball(pair):
    model, x, y = pair
    g = torch.Generator().manual_seed(0)
    adv = pgd(model, x, y, steps=2, random_start=True, generator=g)
    assert (adv - x).abs().max() <= EPS + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    again = pgd(model, x, y, steps=2, random_start=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(adv, again)


def test_early_stop_matches_a_slow_reference(pair):
    """Reference: iterate standard PGD one step at a time; each image keeps its first fooling iterate."""
    model, x, y = pair
    es = pgd(model, x, y, steps=7, early_stop=True)
    iterates = [pgd(model, x, y, steps=k) for k in range(8)]
    ref = iterates[7].clone()
    for i in range(len(x)):
        for k in range(8):
            with torch.no_grad():
                if model(iterates[k][i:i + 1]).argmax(1).item() != y[i].item():
                    ref[i] = iterates[k][i]
                    break
    assert (es - ref).abs().max() <= 1e-5
    assert (es - x).norm() < (iterates[7] - x).norm()  # fooled images keep a smaller perturbation


def test_attack_restores_training_mode_and_weights(pair):
    model, x, y = pair
    net = model.net
    net.train()  # ExplainedModel itself refuses train mode; a raw nn.Module keeps its mode
    before = {k: v.clone() for k, v in net.state_dict().items()}
    pgd(lambda_model(model), x[:4], y[:4], steps=1)
    net.eval()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def lambda_model(model):
    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            assert not self.training, "pgd must run the model in eval mode"
            return self.m(x)
    w = Wrap()
    w.train()
    return w


def test_rejects_unnormalized_input(pair):
    model, x, y = pair
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pgd(model, x * 255, y)


def test_bench_attack_reports_ratios_from_one_run(cifar_root, models_dir):
    from core.bench import bench_attack
    r = bench_attack(n_images=20, fp32_subset=10, batch_size=10)
    assert r["images"] == 20 and r["pgd7_fp32_baseline_measured_on_images"] == 10
    assert r["pgd7_seconds"] > 0 and r["speedup_vs_fp32"] > 0
    assert 0 <= r["bf16_vs_fp32_same_outcome_subset"] <= 1
    assert r["mean_linf_fp32_verified"] <= 8 / 255 + 1e-6


# -- random_start (docs/method.md, "The attack"): a small seeded CNN, so these run without ../shared ----
def _tiny():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32, 10))
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    x[0, :, :2] = 0.0  # pixels at the range's ends: the start's clamp must act there
    x[1, :, :2] = 1.0
    y = torch.arange(6) % 10
    return net.eval(), x, y


def _reference_pgd(model, x, y, eps, alpha, steps, start):
    """PGD line by line (Madry et al.'s pgd_attack.py, in [0, 1]): from ``start``, ``steps`` times
    x += α·sign(∇ₓ Σ CE); x = clip(x, x_nat − ε, x_nat + ε); x = clip(x, 0, 1); the last iterate."""
    adv = start.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(adv), y, reduction="sum")
        grad, = torch.autograd.grad(loss, adv)
        adv = adv.detach() + alpha * grad.sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps)
        adv = adv.clamp(0, 1)
    return adv


def test_without_random_start_pgd_is_the_reference_from_the_image_whatever_the_generator():
    model, x, y = _tiny()
    plain = pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=5)
    assert torch.equal(pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=5,
                           generator=torch.Generator().manual_seed(9)), plain)  # no noise is drawn
    assert torch.allclose(plain, _reference_pgd(model, x, y, EPS, ALPHA, 5, x), atol=1e-6)
    assert torch.equal(pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=0), x)  # x⁰ = x


def test_random_start_is_uniform_noise_in_the_eps_ball_then_the_reference_iteration():
    model, x, y = _tiny()
    start = pgd(model, x, y, eps=EPS, steps=0, random_start=True, generator=torch.Generator().manual_seed(3))
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(3))  # U(0, 1), drawn the same way
    expected = (x + EPS * (2 * u - 1)).clamp(0, 1)
    assert torch.allclose(start, expected, atol=1e-7)
    assert (start - x).abs().max() <= EPS + 1e-7 and start.min() >= 0 and start.max() <= 1
    assert (start != x).float().mean() > 0.5  # noise, not the image (clamped pixels may stay)
    assert (start[0, :, :2] == 0).any() and (start[1, :, :2] == 1).any()  # the clamp acted
    adv = pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=4, random_start=True,
              generator=torch.Generator().manual_seed(3))
    assert torch.allclose(adv, _reference_pgd(model, x, y, EPS, ALPHA, 4, expected), atol=1e-6)
    assert (adv - x).abs().max() <= EPS + 1e-6


def test_random_start_is_reproducible_with_a_seed_and_differs_between_seeds():
    model, x, y = _tiny()

    def run(seed):
        return pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=2, random_start=True,
                   generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))
    assert not torch.equal(run(5), pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=2))
