"""One training iteration: teacher gradients, EMA timing, optimizer steps per width, accumulation, baselines,
float64 parity with the reference semantics, and the two GroupReg forms."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from us3l.core.context import use_width
from us3l.trainer.group_reg import GroupRegularizer
from us3l.trainer.ssl_model import build_ssl_model
from us3l.trainer.step import StepParts, TrainingDivergedError, build_losses, check_finite, iteration_widths, train_step

WIDTHS = [1.0, 0.6, 0.25]


class CountingSGD(torch.optim.SGD):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps = 0

    def step(self, closure=None):
        self.steps += 1
        return super().step(closure)


def make(ssl="simclr_momentum", method="us3l", accumulate=False, reg=True, lr=0.05, momentum=0.9, teacher_width=1.0,
         layers=(), reg_mode="grad"):
    torch.manual_seed(0)
    model = build_ssl_model("us_resnet_mini", {"input_size": 8}, ssl, method, 32, 16, 24, layers,
                            teacher_width=teacher_width)
    opt = CountingSGD(model.trainable_parameters(), lr=lr, momentum=momentum)
    regularizer = GroupRegularizer(5e-4, total_epochs=4) if reg else None
    parts = StepParts(model, model, opt, torch.amp.GradScaler("cpu", enabled=False),
                      build_losses(method, ssl, 0.5, bool(layers)), method, regularizer, accumulate,
                      reg_mode=reg_mode)
    return model, parts


def views(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randn(n, 3, 8, 8, generator=g)


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("ssl", ["simclr_momentum", "byol", "mocov3"])
def test_teacher_never_gets_gradients_and_ema_runs_once_before_the_steps(ssl):
    model, parts = make(ssl)
    x1, x2 = views()
    for p in model.trainable_parameters():  # make online != teacher so the EMA is visible
        p.data.add_(0.01 * torch.randn_like(p))
    online_before, teacher_before = snapshot(model.online_encoder()), snapshot(model.teacher)
    out = train_step(parts, x1, x2, WIDTHS, epoch=3, ema_momentum=0.9)
    assert all(p.grad is None for p in model.teacher.parameters())
    for t_after, t0, o0 in zip(model.teacher.parameters(), teacher_before, online_before):
        # exactly one EMA update, computed from the online weights *before* this iteration's steps
        assert torch.allclose(t_after, 0.9 * t0 + 0.1 * o0, atol=1e-6)
    assert parts.optimizer.steps == len(WIDTHS)
    assert bool(out["finite"]) and float(out["loss_distill"]) != 0.0
    assert any(not torch.equal(a, b) for a, b in zip(model.online_encoder().parameters(), online_before))


def test_ema_is_once_per_iteration_not_per_width():
    model, parts = make()
    x1, x2 = views()
    calls = []
    original = model.teacher_forward
    model.teacher_forward = lambda *a: calls.append(1) or original(*a)
    train_step(parts, x1, x2, [1.0, 0.8, 0.5, 0.3, 0.25], epoch=3, ema_momentum=0.99)
    assert len(calls) == 1 and parts.optimizer.steps == 5


def test_sub_widths_distill_through_the_aux_head_only():
    model, parts = make("byol", reg=False)
    x1, x2 = views()
    train_step(parts, x1, x2, [1.0], epoch=0, ema_momentum=0.99)  # max only: aux head unused
    assert all(p.grad is None for p in model.aux_predictor.parameters())
    assert any(p.grad is not None for p in model.predictor.parameters())
    model, parts = make("byol", reg=False, accumulate=True)
    train_step(parts, x1, x2, [1.0, 0.5], epoch=0, ema_momentum=0.99)
    assert all(p.grad is not None for p in model.aux_predictor.parameters())


def test_accumulate_sums_width_gradients_into_one_step():
    x1, x2 = views()
    model, parts = make(accumulate=True, momentum=0.0, lr=0.1)
    before = snapshot(model.backbone)
    train_step(parts, x1, x2, WIDTHS, epoch=3, ema_momentum=0.99)
    assert parts.optimizer.steps == 1
    # reference: the same per-width losses accumulated by hand on a fresh copy
    ref, ref_parts = make(accumulate=True, momentum=0.0, lr=0.1)
    ref_parts.optimizer.step = lambda closure=None: None  # keep weights fixed, read the summed grads
    train_step(ref_parts, x1, x2, WIDTHS, epoch=3, ema_momentum=0.99)
    for p, p0, r in zip(model.backbone.parameters(), before, ref.backbone.parameters()):
        assert torch.allclose(p, p0 - 0.1 * r.grad, atol=1e-6)


def test_per_width_steps_differ_from_accumulation():
    x1, x2 = views()
    a, pa = make(accumulate=False, momentum=0.0)
    b, pb = make(accumulate=True, momentum=0.0)
    train_step(pa, x1, x2, WIDTHS, 3, 0.99)
    train_step(pb, x1, x2, WIDTHS, 3, 0.99)
    assert pa.optimizer.steps == 3 and pb.optimizer.steps == 1
    assert not torch.allclose(a.backbone.conv1.weight, b.backbone.conv1.weight)


def test_naive_contrastive_baseline_trains_every_width_without_teacher():
    model, parts = make(method="naive-contrastive")
    assert model.teacher is None and model.aux_predictor is None
    x1, x2 = views()
    out = train_step(parts, x1, x2, WIDTHS, epoch=0, ema_momentum=0.99)
    assert parts.optimizer.steps == 3
    assert float(out["loss_base"]) > 0 and float(out["loss_distill"]) > 0  # InfoNCE at max and sub-widths


def _nt_xent_v2(f1, f2, t):
    """The reference's plain SimCLR loss written out (losses/criterions/InfoNCEv2.py, nt_xentv2)."""
    f1, f2 = torch.nn.functional.normalize(f1, dim=1), torch.nn.functional.normalize(f2, dim=1)
    x = torch.cat([f1, f2])
    sim = torch.exp(x @ x.t() / t)
    off = ~torch.eye(len(x), dtype=torch.bool)
    denom = sim.masked_select(off).view(len(x), -1).sum(1)
    pos = torch.exp((f1 * f2).sum(1) / t).repeat(2)
    return (-torch.log(pos / denom)).mean()


def _reference_naive_iteration(model, opt, x1, x2, widths, t=0.5):
    """One iteration of the reference's naive configuration (configs/cifar/us_resnet18_simclr_cifar.yaml under
    workers/ssl.py), written out: widest first, one SGD step per width; the max width's InfoNCE between its
    two online views; each sub-width through the predictor, cosine to the *detached online* max-width
    projections of the other view, taken before the max width's step."""
    cos = torch.nn.functional.cosine_similarity
    target = None
    for i, w in enumerate(widths):
        opt.zero_grad(set_to_none=True)
        with use_width(torch.nn.ModuleList([model.backbone, model.projector]), w):
            z1, z2 = model.projector(model.backbone(x1)), model.projector(model.backbone(x2))
        if i == 0:
            loss = _nt_xent_v2(z1, z2, t)
            target = (z1.detach(), z2.detach())
        else:
            p1, p2 = model.aux_predictor(z1), model.aux_predictor(z2)
            loss = 0.5 * (-cos(p2, target[0], dim=1).mean() - cos(p1, target[1], dim=1).mean())
        loss.backward()
        opt.step()


def test_reference_naive_matches_the_written_out_iteration_in_float64():
    """``--method naive`` is the reference's naive set-up, checked to 1e-12 over two iterations (SGD momentum
    and weight decay 1e-4 as in its config: no GroupReg), not the per-width InfoNCE it used to be."""
    torch.manual_seed(0)
    model = build_ssl_model("us_resnet_mini", {"input_size": 8}, "simclr_momentum", "naive", 32, 16, 24).double()
    assert model.teacher is None and model.predictor is None and model.aux_predictor is not None
    ref = copy.deepcopy(model)
    x1, x2 = (v.double() for v in views())
    opt = CountingSGD(model.trainable_parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    parts = StepParts(model, model, opt, torch.amp.GradScaler("cpu", enabled=False), build_losses("naive", "simclr_momentum", 0.5),
                      "naive")
    ref_opt = torch.optim.SGD(ref.trainable_parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    for _ in range(2):
        out = train_step(parts, x1, x2, WIDTHS, 0, 0.99)
        _reference_naive_iteration(ref, ref_opt, x1, x2, WIDTHS)
    got, want = dict(model.named_parameters()), dict(ref.named_parameters())
    worst = max(float((got[n] - want[n]).detach().abs().max()) for n in got)
    assert worst < 1e-12, worst
    assert float(out["loss_base"]) > 0 and -1 <= float(out["loss_distill"]) <= 1  # InfoNCE, then cosine
    assert parts.optimizer.steps == 2 * len(WIDTHS)


def test_single_width_training_uses_only_its_width():
    model, parts = make(method="single", teacher_width=0.5)
    x1, x2 = views()
    w = iteration_widths(random.Random(0), 0, 4, "single", 3, 0.25, 1.0, True, "A", 0.5)
    assert w == [0.5]
    before = model.backbone.layer3[0].conv2.weight.detach().clone()
    train_step(parts, x1, x2, w, epoch=0, ema_momentum=0.99)
    after = model.backbone.layer3[0].conv2.weight
    # channels beyond the 0.5 slice only change through the regularizer's decay, never by the loss
    assert parts.optimizer.steps == 1
    assert torch.allclose(after[64:], before[64:], rtol=1e-3)


def test_iteration_widths_follow_the_sampler():
    rng = random.Random(3)
    assert iteration_widths(rng, 0, 8, "us3l", 3, 0.25, 1.0, True, "A", 1.0) == [1.0]
    w = iteration_widths(rng, 7, 8, "us3l", 4, 0.25, 1.0, True, "A", 1.0)
    assert len(w) == 4 and w[0] == 1.0 and w[-1] == 0.25 and w == sorted(w, reverse=True)


def test_non_finite_loss_is_flagged_and_raises():
    model, parts = make()
    x1, x2 = views()
    out = train_step(parts, x1 * float("nan"), x2, WIDTHS, epoch=3, ema_momentum=0.99)
    assert not bool(out["finite"])
    with pytest.raises(TrainingDivergedError, match="NaN/inf by epoch 2 step 5"):
        check_finite(out["finite"], 2, 5)


def test_vit_mocov3_us3l_step():
    torch.manual_seed(0)
    model = build_ssl_model("us_vit_tiny", {"input_size": 16, "patch_size": 8, "depth": 1}, "mocov3", "us3l",
                            32, 16, 24)
    assert type(model.projector[0]) is torch.nn.Linear  # ViT features keep 192 dims at every width
    opt = CountingSGD(model.trainable_parameters(), lr=0.01)
    parts = StepParts(model, model, opt, torch.amp.GradScaler("cpu", enabled=False),
                      build_losses("us3l", "mocov3", 0.2), "us3l", None, False)
    x1, x2 = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    out = train_step(parts, x1, x2, [1.0, 0.5, 0.25], epoch=0, ema_momentum=0.99)
    assert opt.steps == 3 and bool(out["finite"]) and float(out["loss_distill"]) > 0
    assert all(p.grad is None for p in model.teacher.parameters())


def test_feature_distillation_adds_its_loss_at_sub_widths_only():
    model, parts = make(layers=("layer2.0.bn2",), accumulate=True)
    x1, x2 = views()
    out = train_step(parts, x1, x2, [1.0], epoch=3, ema_momentum=0.99)
    assert float(out["loss_feat"]) == 0.0 and all(p.grad is None for p in model.proj_conv.parameters())
    out = train_step(parts, x1, x2, WIDTHS, epoch=3, ema_momentum=0.99)
    assert float(out["loss_feat"]) > 0 and all(p.grad is not None for p in model.proj_conv.parameters())


# ---------------------------------------------------------------- reference parity (docs/method.md §7, §9)

LAM, ALPHA, BINS, EPOCHS, WARMUP = 5e-3, 0.05, 8, 8, 0


def _reference_reg(model, width, epoch):
    """R(w, epoch) written out from docs/method.md §9 (autograd form, the reference's)."""
    half = EPOCHS // 2
    a = 0.0 if epoch < WARMUP else (ALPHA * (epoch - WARMUP) / (half - WARMUP) if epoch < half else ALPHA)
    total = 0.0
    for name, p in model.named_parameters():
        if "teacher" in name or "proj_conv" in name or ("predictor" in name and width == 1.0):
            continue
        if p.dim() in (1, 4):
            size = p.shape[0] // BINS
            idx = torch.arange(p.shape[0])
            b = torch.clamp(idx // size, max=BINS - 1) if size else torch.full_like(idx, BINS - 1)
            lam = (LAM * (1.0 - a * b.to(p.dtype))).view(-1, *([1] * (p.dim() - 1)))
            total = total + (lam * p * p).sum()
        else:
            total = total + LAM * (p * p).sum()
    return total


def _reference_iteration(model, opt, x1, x2, widths, epoch, m):
    """One BYOL US3L iteration as docs/method.md §7 states it, GroupReg in the loss of every width step."""
    online = list(model.backbone.parameters()) + list(model.projector.parameters())
    with torch.no_grad():
        for t, o in zip(model.teacher.parameters(), online):
            t.mul_(m).add_(o, alpha=1 - m)
        with use_width(model.teacher, 1.0):
            k1, k2 = model.teacher(x1), model.teacher(x2)
    cos = torch.nn.functional.cosine_similarity
    for i, w in enumerate(widths):
        opt.zero_grad(set_to_none=True)
        with use_width(torch.nn.ModuleList([model.backbone, model.projector]), w):
            z1, z2 = model.projector(model.backbone(x1)), model.projector(model.backbone(x2))
        head = model.predictor if i == 0 else model.aux_predictor
        q1, q2 = head(z1), head(z2)
        loss = 0.5 * (-cos(q1, k2, dim=1).mean() - cos(q2, k1, dim=1).mean())
        (loss + _reference_reg(model, w, epoch)).backward()
        opt.step()


@pytest.mark.parametrize("epoch", [1, 6])
def test_float64_iteration_matches_the_reference_semantics(epoch):
    """EMA, teacher targets, per-width SGD steps and GroupReg (gradient form) agree with docs/method.md §7/§9 to 1e-14.

    Also catches a float64 run silently computing its losses in float32 (the step used to cast
    every projection with ``.float()``; ~3e-9 off after one step).
    """
    torch.manual_seed(0)
    model = build_ssl_model("us_resnet_mini", {"input_size": 8}, "byol", "us3l", 32, 16, 24).double()
    for p in model.trainable_parameters():  # online != teacher, so the EMA is exercised
        p.data.add_(0.01 * torch.randn_like(p))
    ref = copy.deepcopy(model)
    x1, x2 = (v.double() for v in views())
    widths = [1.0, 0.6, 0.25]
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.05, momentum=0.9)
    reg = GroupRegularizer(LAM, ALPHA, BINS, WARMUP, EPOCHS)
    parts = StepParts(model, model, opt, torch.amp.GradScaler("cpu", enabled=False),
                      build_losses("us3l", "byol", 0.5), "us3l", reg)
    ref_opt = torch.optim.SGD(ref.trainable_parameters(), lr=0.05, momentum=0.9)
    for _ in range(2):  # two iterations: the momentum buffers carry over
        out = train_step(parts, x1, x2, widths, epoch, 0.99)
        _reference_iteration(ref, ref_opt, x1, x2, widths, epoch, 0.99)
    got, want = dict(model.named_parameters()), dict(ref.named_parameters())
    worst = max(float((got[n] - want[n]).detach().abs().max()) for n in got)
    assert worst < 1e-14, worst
    assert float(out["reg"]) > 0


@pytest.mark.parametrize("ssl,layers", [("simclr_momentum", ("layer2.0.bn2",)), ("byol", ())])
def test_gradient_form_of_group_reg_gives_the_autograd_update(ssl, layers):
    """Item 5: the GroupReg gradient added after backward gives the same weights as the term in the loss.

    Old behaviour caught: StepParts had no ``reg_mode`` (only the autograd form existed).
    """
    x1, x2 = views()
    a, pa = make(ssl, layers=layers, reg_mode="grad")
    b, pb = make(ssl, layers=layers, reg_mode="autograd")
    for _ in range(2):
        oa = train_step(pa, x1, x2, WIDTHS, epoch=3, ema_momentum=0.99)
        ob = train_step(pb, x1, x2, WIDTHS, epoch=3, ema_momentum=0.99)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6, rtol=0), n
    assert float(oa["reg"]) == pytest.approx(float(ob["reg"]), rel=1e-5)
    assert "reg" not in train_step(pa, x1, x2, WIDTHS, epoch=3, ema_momentum=0.99, reg_value=False)


def test_gradient_form_under_a_loss_scaler_gives_the_autograd_update():
    """Item 5 under AMP: the added term is multiplied by the scaler's scale before the step unscales.

    A CPU GradScaler with scale 1024 stands in for CUDA AMP (no GPU here); without the factor the
    regulariser would act 1024x too weakly.
    """
    x1, x2 = views()
    models = []
    for mode in ("grad", "autograd"):
        model, parts = make(reg_mode=mode, lr=0.5)
        parts.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        train_step(parts, x1, x2, WIDTHS, epoch=3, ema_momentum=0.99)
        assert parts.scaler.get_scale() == 1024.0  # no inf/NaN step skipped
        models.append(model)
    for (n, p), q in zip(models[0].named_parameters(), models[1].parameters()):
        assert torch.allclose(p, q, atol=1e-6, rtol=0), n
