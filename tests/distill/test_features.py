"""The feature KD methods (autokd.distill.features) and their hooks (autokd.distill.hooks): what a Tap captures and
when it refuses, the stage ends matched by resolution, each method's term against the paper's formula written out
by hand and against torchdistill's module on the same features, gradients, and the hooks and regressors through
pruning, quantization, a whole trial and ``autokd validate``."""

from __future__ import annotations

import optuna
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchdistill.losses.mid_level import ATLoss, PKTLoss

from autokd.compress.prune import prune_model
from autokd.compress.quantize import quantize_model
from autokd.distill import FEATURE_METHODS, FeatureDistiller, feature_pairs
from autokd.distill.hooks import StageEnd, Tap, last_batchnorm, match_stages, stage_ends
from autokd.models import build_model

SHAPE = (1, 8, 8)
# what the small models below have, worked out once by hand from their stage tables: the last module holding a
# BatchNorm at each resolution (MobileNetV2 'small' at width 0.5: the residual block after the stem at 8x8, the
# second block of the first stride-2 stage at 4x4, the head conv at 2x2; ResNet depth 1: one block per stage)
STUDENT_ENDS = {(8, 8): ("features.1", 8), (4, 4): ("features.3", 12), (2, 2): ("features.8", 128)}
TEACHER_ENDS = {(8, 8): ("features.3", 8), (4, 4): ("features.4", 16), (2, 2): ("features.5", 32)}


def student_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mobilenetv2", num_classes=10, in_channels=1, width_mult=0.5, stages="small")


def teacher_net(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet", num_classes=10, in_channels=1, width=8, depth=1).eval()


@pytest.fixture
def nets():
    return student_net(), teacher_net()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, *SHAPE, generator=g), torch.randint(10, (16,), generator=g)


def forward_hooks(model: nn.Module) -> dict[str, int]:
    """Module path -> number of forward hooks (of every kind torch keeps), for the modules that have any."""
    out = {}
    for name, m in model.named_modules():
        n = len(m._forward_hooks) + len(m._forward_pre_hooks)
        if n:
            out[name] = n
    return out


class Capture:
    """Our own forward hooks (independent of Tap): {path: output} and {path: input} of the last forward."""

    def __init__(self, model: nn.Module, outputs=(), inputs=()):
        self.out, self.inp, self.handles = {}, {}, []
        for p in outputs:
            self.handles.append(model.get_submodule(p).register_forward_hook(
                lambda m, i, o, p=p: self.out.__setitem__(p, o)))
        for p in inputs:
            self.handles.append(model.get_submodule(p).register_forward_hook(
                lambda m, i, o, p=p: self.inp.__setitem__(p, i[0])))

    def close(self):
        for h in self.handles:
            h.remove()


# --- Tap -------------------------------------------------------------------------------------------------------


def _by_hand(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The output of every ``features`` child and the classifier's input, by running the model's body step by step."""
    outs, h = [], x
    for m in model.features:
        h = m(h)
        outs.append(h)
    return outs, model.pool(h).flatten(1)


def test_tap_captures_outputs_and_inputs_by_path_as_torchdistills_io_dict(nets, batch):
    """A Tap keeps, per path, the output (or the input) of the last forward, in the {path: {io: tensor}} shape
    torchdistill's losses read; take() hands them over once (the next take refuses until another forward)."""
    student, _ = nets
    student.eval()
    x, _ = batch
    with Tap(student, ["features.1", "features.8", "features.1"]) as outs, \
            Tap(student, ["classifier"], "input") as ins, torch.no_grad():
        assert outs.paths == ("features.1", "features.8")  # a path given twice is hooked once
        want, penultimate = _by_hand(student, x)  # (through the hooked modules too: overwritten below)
        student(x + 1)  # an earlier forward: only the last one counts
        student(x)
        got_out, got_in = outs.take(), ins.take()
        assert set(got_out) == {"features.1", "features.8"} and set(got_in) == {"classifier"}
        assert all(set(v) == {"output"} for v in got_out.values()) and set(got_in["classifier"]) == {"input"}
        assert torch.equal(got_out["features.1"]["output"], want[1])
        assert torch.equal(got_out["features.8"]["output"], want[8])
        assert torch.equal(got_in["classifier"]["input"], penultimate)
        with pytest.raises(RuntimeError, match="no features were captured at features.1, features.8"):
            outs.take()  # cleared by the first take
        student(x)
        assert torch.equal(outs.take()["features.8"]["output"], want[8])


def test_tap_refuses_before_any_forward_and_refuses_bad_paths_and_io(nets):
    student, _ = nets
    tap = Tap(student, ["classifier"])
    with pytest.raises(RuntimeError, match="no features were captured at classifier"):
        tap.take()
    tap.close()
    with pytest.raises(ValueError, match="the model has no module 'features.99'"):
        Tap(student, ["features.99"])
    with pytest.raises(ValueError, match="io must be one of input, output"):
        Tap(student, ["classifier"], "grad")
    assert forward_hooks(student) == {}  # the refused Taps left nothing behind either


def test_a_tap_refused_for_a_later_bad_path_leaves_no_hook(nets):
    student, _ = nets
    with pytest.raises(ValueError, match="the model has no module 'features.1.nope'"):
        Tap(student, ["features.1", "features.1.nope"])
    assert forward_hooks(student) == {}


def _assert_one_hook_reads_then_closes(tap: Tap, student: nn.Module, x: torch.Tensor) -> None:
    """After ``tap.attach``: exactly one hook on the (new) classifier, which captures its input; close leaves none."""
    tap.attach(student)
    assert forward_hooks(student) == {"classifier": 1}  # attach re-registers, it does not add a second hook
    grab = Capture(student, inputs=["classifier"])
    student(x)
    assert torch.equal(tap.take()["classifier"]["input"], grab.inp["classifier"])
    grab.close()
    tap.close()
    assert forward_hooks(student) == {}


def test_a_module_replaced_by_setattr_loses_its_hook_until_attach(nets, batch):
    """Replacing a hooked module (as compression does) drops the hook: the Tap then refuses rather than hand over
    nothing; attach() hooks the new module, whose input is then what is captured."""
    student, _ = nets
    x, _ = batch
    tap = Tap(student, ["classifier"], "input")
    student.classifier = nn.Linear(student.classifier.in_features, 10)
    student(x)
    with pytest.raises(RuntimeError, match="classifier"):
        tap.take()
    _assert_one_hook_reads_then_closes(tap, student, x)


def test_close_removes_every_hook(nets, batch):
    student, teacher = nets
    x, y = batch
    paths = [n for n, _ in student.named_modules() if n]  # every module, so that any leftover would be seen
    tap = Tap(student, paths)
    assert len(forward_hooks(student)) == len(paths)
    tap.close()
    assert forward_hooks(student) == {}
    for method in FEATURE_METHODS:
        d = FeatureDistiller(method, student, teacher, image_shape=SHAPE)
        d.step(student, x, y)
        assert forward_hooks(student) and forward_hooks(teacher)
        d.close()
        assert forward_hooks(student) == {} and forward_hooks(teacher) == {}, method


# --- stage ends --------------------------------------------------------------------------------------------------


def _ends_by_hand(model: nn.Module) -> list[tuple[str, int, tuple[int, int]]]:
    """(path, channels, size) of the last ``features`` child holding a BatchNorm at each resolution, largest first,
    from one forward of our own."""
    shapes = {}
    handles = [m.register_forward_hook(lambda mod, i, o, k=k: shapes.__setitem__(k, tuple(o.shape[1:])))
               for k, m in enumerate(model.features)]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *SHAPE))
    for h in handles:
        h.remove()
    last = {}
    for k, m in enumerate(model.features):
        if any(isinstance(b, nn.BatchNorm2d) for b in m.modules()):
            c, hgt, wid = shapes[k]
            last[(hgt, wid)] = (f"features.{k}", c, (hgt, wid))
    return sorted(last.values(), key=lambda e: -e[2][0] * e[2][1])


@pytest.mark.parametrize("which", ["student", "teacher"])
def test_stage_ends_are_the_last_module_with_a_batchnorm_at_each_resolution(which):
    model = student_net() if which == "student" else teacher_net()
    known = STUDENT_ENDS if which == "student" else TEACHER_ENDS
    model.train()
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    ends = stage_ends(model, SHAPE)
    assert model.training  # its mode is given back
    assert all(torch.equal(stats[k], v) for k, v in model.state_dict().items())  # measured in eval: no BN update
    assert forward_hooks(model) == {}
    assert [e.size for e in ends] == [(8, 8), (4, 4), (2, 2)]
    assert [(e.path, e.channels, e.size) for e in ends] == _ends_by_hand(model)
    assert {e.size: (e.path, e.channels) for e in ends} == known
    for e in ends:  # the stage's channels are its last BatchNorm's
        assert last_batchnorm(model.get_submodule(e.path)).num_features == e.channels


def test_match_stages_picks_the_shared_resolutions(nets):
    student, teacher = nets
    s, t = stage_ends(student, SHAPE), stage_ends(teacher, SHAPE)

    def paths(pairs):
        assert all(a.size == b.size for a, b in pairs)
        return [(a.path, b.path) for a, b in pairs]

    pair = {size: (STUDENT_ENDS[size][0], TEACHER_ENDS[size][0]) for size in STUDENT_ENDS}
    assert paths(match_stages(s, t, "all")) == [pair[(8, 8)], pair[(4, 4)], pair[(2, 2)]]
    assert paths(match_stages(s, t, "first")) == [pair[(8, 8)]]
    assert paths(match_stages(s, t, "middle")) == [pair[(4, 4)]]
    assert paths(match_stages(s, t, "last")) == [pair[(2, 2)]]
    for i, size in enumerate([(8, 8), (4, 4), (2, 2)]):
        assert paths(match_stages(s, t, i)) == [pair[size]]
    # only resolutions both have count: a student ending at 1x1 still has 'last' at the teacher's last, 2x2
    deeper = [*s, StageEnd("features.9", 256, (1, 1))]
    assert paths(match_stages(deeper, t, "last")) == [pair[(2, 2)]]
    assert paths(match_stages(deeper[1:], t, "first")) == [pair[(4, 4)]]


@pytest.mark.parametrize("layers", [3, -1])
def test_a_level_past_the_shared_ones_is_refused_naming_them(nets, layers):
    student, teacher = nets
    with pytest.raises(ValueError, match=rf"level {layers} is not shared .*3 resolutions \(8x8, 4x4, 2x2\), "
                                         r"levels 0-2"):
        feature_pairs("at", student, teacher, SHAPE, layers)


@pytest.mark.parametrize("layers", ["mid", True, 1.0])
def test_a_bad_layers_value_is_refused(nets, layers):
    student, teacher = nets
    with pytest.raises(ValueError, match="layers must be one of all, first, middle, last or a level index"):
        match_stages(stage_ends(student, SHAPE), stage_ends(teacher, SHAPE), layers)


class _Odd(nn.Module):
    """A body whose only stage is at 3x3: nothing in common with the teacher's 8x8, 4x4, 2x2."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, 3, 1), nn.BatchNorm2d(4))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4, 10)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def test_a_student_sharing_no_resolution_is_refused(nets):
    _, teacher = nets
    with pytest.raises(ValueError, match=r"share no feature resolution \(student: 3x3; teacher: 8x8, 4x4, 2x2\)"):
        FeatureDistiller("at", _Odd(), teacher, image_shape=SHAPE)
    # the penultimate features need no shared resolution
    FeatureDistiller("pkt", _Odd(), teacher, image_shape=SHAPE).close()


# --- the terms ---------------------------------------------------------------------------------------------------


def _step_with_capture(d: FeatureDistiller, student, teacher, batch, s_paths, t_paths, io="output"):
    """Run ``d.step`` with our own hooks on the given paths; returns (logits, loss, student feats, teacher feats)."""
    x, y = batch
    if io == "output":
        cs, ct = Capture(student, outputs=[*s_paths, "classifier"]), Capture(teacher, outputs=t_paths)
    else:
        cs, ct = Capture(student, outputs=["classifier"], inputs=s_paths), Capture(teacher, inputs=t_paths)
    logits, loss = d.step(student, x, y)
    cs.close()
    ct.close()
    assert torch.equal(logits, cs.out["classifier"])
    feats = (cs.out, ct.out) if io == "output" else (cs.inp, ct.inp)
    return logits, loss, *feats


def test_at_is_the_authors_code_and_torchdistills_atloss(nets, batch):
    """Zagoruyko & Komodakis' code: beta/2 * sum over the pairs of mean((at(s) - at(t))^2), at(f) the L2-normalized
    channel mean of f^2; the same as torchdistill's ATLoss(mode='code') times beta/2."""
    student, teacher = nets
    beta = 300.0
    d = FeatureDistiller("at", student, teacher, image_shape=SHAPE, settings={"beta": beta})
    assert d.values == {"beta": beta, "layers": "all"}  # the setting overrides its default, the other one stays
    s_paths = [STUDENT_ENDS[k][0] for k in STUDENT_ENDS]
    t_paths = [TEACHER_ENDS[k][0] for k in TEACHER_ENDS]
    logits, loss, sf, tf = _step_with_capture(d, student, teacher, batch, s_paths, t_paths)
    _, y = batch

    def at(f):
        return F.normalize(f.pow(2).mean(1).flatten(1), dim=1)

    by_hand = beta / 2 * sum(((at(sf[a]) - at(tf[b])) ** 2).mean() for a, b in zip(s_paths, t_paths))
    pairs = {f"p{i}": {"student": {"io": "output", "path": a}, "teacher": {"io": "output", "path": b}, "weight": 1}
             for i, (a, b) in enumerate(zip(s_paths, t_paths))}
    module = beta / 2 * ATLoss(pairs, mode="code")({p: {"output": sf[p]} for p in s_paths},
                                                   {p: {"output": tf[p]} for p in t_paths})
    ce = F.cross_entropy(logits, y)
    assert by_hand > 0
    assert torch.allclose(loss, by_hand + ce, rtol=1e-5, atol=1e-6)
    assert torch.allclose(loss, module + ce, rtol=1e-5, atol=1e-6)
    d.close()


def _pkt_by_hand(s, t, eps=1e-7):
    def probs(f):
        f = f / (f.norm(dim=1, keepdim=True) + eps)
        sim = (f @ f.T + 1) / 2
        return sim / sim.sum(1, keepdim=True)

    ps, pt = probs(s), probs(t)
    return (pt * torch.log((pt + eps) / (ps + eps))).mean()


def test_pkt_is_torchdistills_pktloss_on_the_classifier_inputs(nets, batch):
    student, teacher = nets
    weight = 500.0
    d = FeatureDistiller("pkt", student, teacher, image_shape=SHAPE, label_smoothing=0.1,
                         settings={"weight": weight})
    assert d.values == {"weight": weight}
    logits, loss, si, ti = _step_with_capture(d, student, teacher, batch, ["classifier"], ["classifier"], "input")
    _, y = batch
    s, t = si["classifier"], ti["classifier"]
    assert s.shape == (16, 128) and t.shape == (16, 32)
    module = PKTLoss("classifier", "input", "classifier", "input")({"classifier": {"input": s}},
                                                                   {"classifier": {"input": t}})
    ce = F.cross_entropy(logits, y, label_smoothing=0.1)
    assert module > 0
    assert torch.allclose(loss, weight * module + ce, rtol=1e-5, atol=1e-6)
    assert torch.allclose(loss, weight * _pkt_by_hand(s, t) + ce, rtol=1e-4, atol=1e-6)
    d.close()


def test_fitnets_is_the_mse_of_a_1x1_regressor_onto_the_teachers_stage(nets, batch):
    student, teacher = nets
    weight = 20.0
    d = FeatureDistiller("fitnets", student, teacher, image_shape=SHAPE,
                         settings={"weight": weight, "layers": "all"})
    s_paths = [STUDENT_ENDS[k][0] for k in STUDENT_ENDS]
    t_paths = [TEACHER_ENDS[k][0] for k in TEACHER_ENDS]
    # one 1x1 regressor per pair, student channels in, teacher channels out; trained beside the student
    assert [(r.in_channels, r.out_channels, r.kernel_size) for r in d.adapters] == \
        [(STUDENT_ENDS[k][1], TEACHER_ENDS[k][1], (1, 1)) for k in STUDENT_ENDS]
    assert {id(p) for p in d.parameters()} == {id(p) for p in d.adapters.parameters()} and d.parameters()
    assert not {id(p) for p in d.parameters()} & {id(p) for p in student.parameters()}
    logits, loss, sf, tf = _step_with_capture(d, student, teacher, batch, s_paths, t_paths)
    _, y = batch
    hints = sum(((F.conv2d(sf[a], r.weight, r.bias) - tf[b]) ** 2).mean()
                for r, a, b in zip(d.adapters, s_paths, t_paths))
    assert torch.allclose(loss, weight * hints + F.cross_entropy(logits, y), rtol=1e-5)
    d.close()


def test_defaults_are_the_papers_and_unknown_settings_are_refused(nets):
    student, teacher = nets
    fit = FeatureDistiller("fitnets", student, teacher, image_shape=SHAPE)
    assert fit.values == {"weight": 100.0, "layers": "middle"}
    assert [(a.path, b.path) for a, b in fit.pairs] == [(STUDENT_ENDS[(4, 4)][0], TEACHER_ENDS[(4, 4)][0])]
    fit.close()
    at = FeatureDistiller("at", student, teacher, image_shape=SHAPE)
    assert at.values == {"beta": 1000.0, "layers": "all"} and len(at.pairs) == 3
    at.close()
    with pytest.raises(ValueError, match=r"at: unknown settings \['weight'\] \(valid: beta, layers\)"):
        FeatureDistiller("at", student, teacher, image_shape=SHAPE, settings={"weight": 1.0})
    with pytest.raises(ValueError, match=r"pkt: unknown settings \['layers'\] \(valid: weight\)"):
        FeatureDistiller("pkt", student, teacher, image_shape=SHAPE, settings={"layers": "all"})
    with pytest.raises(ValueError, match="unknown feature KD method 'hinton' .valid: at, fitnets, pkt"):
        FeatureDistiller("hinton", student, teacher, image_shape=SHAPE)
    with pytest.raises(ValueError, match="ce_weight must be >= 0"):
        FeatureDistiller("at", student, teacher, image_shape=SHAPE, ce_weight=-1.0)
    assert forward_hooks(student) == {} and forward_hooks(teacher) == {}  # refused before hooking anything


# --- gradients -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(FEATURE_METHODS))
def test_the_teacher_gets_no_gradient_and_keeps_its_eval_mode_and_statistics(nets, batch, method):
    student, teacher = nets
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    d = FeatureDistiller(method, student, teacher, image_shape=SHAPE)
    x, y = batch
    _, loss = d.step(student, x, y)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(m.training for m in teacher.modules())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # BN running stats unchanged
    assert all(p.grad is not None for p in d.parameters())  # FitNets' regressors learn
    d.close()


def test_the_at_term_alone_reaches_the_students_hinted_stages(nets, batch):
    """Without the cross-entropy (ce_weight 0) only the feature term counts: every hinted stage end's convolutions
    get gradient from it, the classifier (after the last stage) none."""
    student, teacher = nets
    d = FeatureDistiller("at", student, teacher, image_shape=SHAPE, ce_weight=0.0)
    x, y = batch
    _, loss = d.step(student, x, y)
    loss.backward()
    for size, (path, _) in STUDENT_ENDS.items():
        convs = [m for m in student.get_submodule(path).modules() if isinstance(m, nn.Conv2d)]
        assert convs and all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in convs), path
    assert student.classifier.weight.grad is None or not student.classifier.weight.grad.any()
    d.close()


# --- pruning -------------------------------------------------------------------------------------------------------


def _distinct_gammas(model: nn.Module) -> None:
    """Give every BatchNorm distinct gammas, so that a channel can be recognised by its gamma after pruning."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))


def test_fitnets_regressors_follow_the_channels_pruning_kept(nets, batch):
    """After pruning, each regressor reads the hinted stage's remaining channels with the weights it had for them:
    the kept channels are found independently by their BatchNorm gammas, which pruning moves unchanged."""
    student, teacher = nets
    _distinct_gammas(student)
    d = FeatureDistiller("fitnets", student, teacher, image_shape=SHAPE, settings={"layers": "all"})
    s_paths = [STUDENT_ENDS[k][0] for k in STUDENT_ENDS]
    bns = [last_batchnorm(student.get_submodule(p)) for p in s_paths]
    old_w = [r.weight.detach().clone() for r in d.adapters]
    old_b = [r.bias.detach().clone() for r in d.adapters]
    old_g = [bn.weight.detach().clone() for bn in bns]
    assert [r.in_channels for r in d.adapters] == [STUDENT_ENDS[k][1] for k in STUDENT_ENDS]
    x, y = batch
    removed: dict[int, list[int]] = {}
    prune_model(student, ratio=0.5, method="l1", example_input=x[:1], removed=removed)
    d.pruned(removed)
    for path, r, bn, w, b, g in zip(s_paths, d.adapters, bns, old_w, old_b, old_g):
        assert last_batchnorm(student.get_submodule(path)) is bn  # pruned in place
        new_g = bn.weight.detach()
        kept = [int((g == v).nonzero()) for v in new_g]  # each new gamma is exactly one old one
        assert kept == sorted(kept) and len(kept) < len(g), path  # pruned, order kept
        assert kept == [i for i in range(len(g)) if i not in set(removed[id(bn)])]
        assert r.in_channels == bn.num_features == len(kept)
        assert torch.equal(r.weight.detach(), w[:, kept])
        assert torch.equal(r.bias.detach(), b)
    _, loss = d.step(student, x, y)  # shapes agree
    assert torch.isfinite(loss)
    loss.backward()
    d.close()


def test_pruned_refuses_channels_lost_without_their_indices(nets, batch):
    student, teacher = nets
    d = FeatureDistiller("fitnets", student, teacher, image_shape=SHAPE)
    x, _ = batch
    prune_model(student, ratio=0.5, method="l1", example_input=x[:1], removed={})
    with pytest.raises(RuntimeError, match=r"the hinted layer has 6 channels, but pruning says it kept 12 of 12"):
        d.pruned({})
    d.close()


# --- quantization --------------------------------------------------------------------------------------------------


def test_a_tap_on_a_layer_quantization_replaced_keeps_one_hook_and_closes_clean(nets, batch):
    """autokd's quantization wrapper takes the replaced layer's attributes along, hooks included: attach must
    leave exactly one hook on the new layer, and close must remove that copy too (a handle reaches only the old
    layer's dict)."""
    student, _ = nets
    x, _ = batch
    tap = Tap(student, ["classifier"], "input")
    quantize_model(student, bits=4)
    assert type(student.classifier).__name__ == "QuantLinear"
    _assert_one_hook_reads_then_closes(tap, student, x)


def test_pkt_after_quantization_and_attach_reads_the_quantized_classifiers_input(nets, batch):
    student, teacher = nets
    weight = 1000.0
    d = FeatureDistiller("pkt", student, teacher, image_shape=SHAPE, settings={"weight": weight})
    quantize_model(student, bits=4)
    assert type(student.classifier).__name__ == "QuantLinear"
    d.attach(student)
    logits, loss, si, ti = _step_with_capture(d, student, teacher, batch, ["classifier"], ["classifier"], "input")
    _, y = batch
    pkt = PKTLoss("classifier", "input", "classifier", "input")({"classifier": {"input": si["classifier"]}},
                                                                {"classifier": {"input": ti["classifier"]}})
    assert torch.allclose(loss, weight * pkt + F.cross_entropy(logits, y), rtol=1e-5)
    d.close()


def test_close_after_quantization_leaves_no_hook(nets, batch):
    student, teacher = nets
    d = FeatureDistiller("pkt", student, teacher, image_shape=SHAPE)
    quantize_model(student, bits=4)
    d.attach(student)
    d.close()
    assert forward_hooks(student) == {}


# --- a whole trial -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", [
    "fitnets",
    "pkt",
])
def test_a_pruned_quantized_trial_leaves_no_hook_and_no_regressor(compressed, with_method, method):
    from autokd.models import build_student
    from autokd.objective import run_config
    from autokd.sampling import sample

    _, _, inputs = compressed
    settings = {"fitnets": {"layers": "all"}} if method == "fitnets" else {}
    cfg = sample(with_method(method, **settings), optuna.trial.FixedTrial({"distill.kd": True}))
    out = run_config(cfg, inputs)
    assert forward_hooks(inputs.teacher.models[0]) == {}
    assert forward_hooks(out.model) == {}
    # the same keys as the bare architecture, quantized: nothing of the regressors came along
    bare = quantize_model(build_student(cfg.model, num_classes=10, in_channels=1), bits=4)
    assert out.model.state_dict().keys() == bare.state_dict().keys()
    assert not any("adapter" in k for k in out.model.state_dict())


# --- validate ------------------------------------------------------------------------------------------------------

LAYERS_SPACE = """\
version: 1
name: layers
dataset:
  name: digits
  image_size: 8
model:
  family: mobilenetv2
  width_mult: 0.5
distill:
  kd: {choices: [true, false]}
  method: {choices: [hinton, fitnets]}
  fitnets:
    layers: 5
  teacher:
    family: resnet
    width: 8
    epochs: 1
train:
  epochs: 1
search:
  n_trials: 2
"""


def test_validate_refuses_layers_the_networks_do_not_share_in_one_located_line(cli, space_file):
    """``autokd validate`` builds the student and the teacher of the space and matches their stages: a level they
    do not share is one error line with the file, the line of ``layers``, the dotted path and what is shared."""
    path = space_file(LAYERS_SPACE)
    res = cli("validate", path)
    assert res.code == 2, (res.code, res.err)
    assert "Traceback" not in res.err + res.out
    assert len(res.err_lines) == 1, res.err
    line_no = next(i + 1 for i, line in enumerate(LAYERS_SPACE.splitlines()) if line.strip() == "layers: 5")
    assert line_no == 13
    line = res.err_lines[0]
    assert line.startswith(f"error: {path}:{line_no}: distill.fitnets.layers: 5: "), line
    assert "8x8, 4x4, 2x2" in line and "levels 0-2" in line, line
    res = cli("validate", space_file(LAYERS_SPACE.replace("layers: 5", "layers: last")))
    assert res.code == 0, res.err
    assert res.err == ""


def test_pkt_reads_the_penultimate_features_before_dropout(batch):
    """PKT compares the penultimate feature vectors: with student dropout on, what it reads is the pooled features
    before dropout drops any (the classifier's input would be the dropped-out copy)."""
    torch.manual_seed(0)
    student = build_model("mobilenetv2", num_classes=10, in_channels=1, width_mult=0.5, stages="small", dropout=0.5)
    d = FeatureDistiller("pkt", student, teacher_net(), image_shape=SHAPE)
    assert d.student_tap.paths == ("dropout",)
    grab = Capture(student, outputs=["pool"], inputs=["classifier"])
    x, y = batch
    student.train()
    captured = {}
    real_term = d.term
    d.term = lambda s, t: captured.update(s=s) or real_term(s, t)
    d.step(student, x, y)
    grab.close()
    d.close()
    got = captured["s"]["dropout"]["input"]
    assert torch.equal(got, grab.out["pool"].flatten(1))
    assert not torch.equal(got, grab.inp["classifier"])  # dropout did drop something from the classifier's input
