"""The view pool: fixed, seeded shifted (and flipped) copies of the training images; training over it; a KD trial and
its KD-off twin see the same views; the teacher's logits over the pool are computed once and cached."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autokd.train
from autokd.data import augment_pool, load_dataset
from autokd.objective import TrialInputs, prepare_inputs, run_config
from autokd.sampling import TrialConfig
from autokd.space import resolve, space_from_dict
from autokd.teacher import get_teacher
from autokd.train import Distillation, Optim, fit, predict, stream_seed
from autokd.progress import EventLog


def shifted(x: torch.Tensor, dy: int, dx: int, shift: int) -> torch.Tensor:
    """``x`` (N, C, H, W) zero-padded by ``shift`` and cropped at offset (dy, dx) in [0, 2*shift]."""
    h, w = x.shape[-2:]
    return F.pad(x, (shift,) * 4)[..., dy:dy + h, dx:dx + w]


def candidates(x: torch.Tensor, shift: int, flip: bool) -> torch.Tensor:
    """Every allowed augmentation of every image: (K, N, C, H, W)."""
    out = [shifted(x, dy, dx, shift) for dy in range(2 * shift + 1) for dx in range(2 * shift + 1)]
    if flip:
        out += [o.flip(-1) for o in out]
    return torch.stack(out)


def matches(pool: torch.Tensor, x: torch.Tensor, shift: int, flip: bool) -> torch.Tensor:
    """(V, N, K) bool: view v of image n equals candidate k."""
    cands = candidates(x, shift, flip)  # (K, N, ...)
    return (pool[:, None] == cands[None]).flatten(3).all(-1).permute(0, 2, 1)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Random images: no two shifts or flips of one image are equal."""
    return torch.randn(64, 2, 8, 8, generator=torch.Generator().manual_seed(1))


# --- augment_pool ------------------------------------------------------------------------------------------


def test_pool_shape_and_dtype(images):
    pool = augment_pool(images, views=3, seed=0, flip=False)
    assert pool.shape == (3, *images.shape)
    assert pool.dtype == images.dtype
    assert torch.isfinite(pool).all()


def test_pool_is_deterministic_for_a_seed_and_differs_across_seeds(images):
    a = augment_pool(images, views=4, seed=7, flip=True)
    assert torch.equal(a, augment_pool(images, views=4, seed=7, flip=True))
    b = augment_pool(images, views=4, seed=8, flip=True)
    assert not torch.equal(a, b)
    # the views within one pool differ too
    assert not torch.equal(a[0], a[1])


@pytest.mark.parametrize("shift", [1, 2])
def test_each_view_is_a_padded_shift_of_its_image(images, shift):
    pool = augment_pool(images, views=4, seed=0, flip=False, max_shift=shift)
    hits = matches(pool, images, shift, flip=False)  # (V, N, K)
    assert hits.any(-1).all(), "some view is not a zero-padded shift of its image"
    used = hits.any(1).any(0)  # which offsets occurred at all
    assert used.sum() >= (2 * shift + 1) ** 2 - 1, "the offsets should cover (almost) the whole range"
    # the centre pixel of a view comes from within `shift` pixels of the centre of its image
    c = images.shape[-1] // 2
    window = images[..., c - shift:c + shift + 1, c - shift:c + shift + 1]  # (N, C, k, k)
    centre = pool[..., c, c]  # (V, N, C)
    close = (window[None] == centre[..., None, None]).flatten(-2).any(-1)
    assert close.all()


def test_default_shift_is_an_eighth_of_the_side():
    x = torch.randn(32, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    pool = augment_pool(x, views=2, seed=0, flip=False)  # 16 / 8 = 2 px
    assert matches(pool, x, 2, flip=False).any(-1).all()
    assert not matches(pool, x, 1, flip=False).any(-1).all()  # some view was shifted by 2 px


def test_views_include_the_identity_and_real_shifts(images):
    pool = augment_pool(images, views=4, seed=0, flip=False)
    same = (pool == images[None]).flatten(2).all(-1)  # (V, N)
    assert same.any() and not same.all()


def test_flips_only_with_flip(images):
    no_flip = augment_pool(images, views=4, seed=3, flip=False)
    hits = matches(no_flip, images, 1, flip=True)
    k = hits.shape[-1] // 2
    assert hits[..., :k].any(-1).all() and not hits[..., k:].any()  # never mirrored
    with_flip = augment_pool(images, views=4, seed=3, flip=True)
    hits = matches(with_flip, images, 1, flip=True)
    assert hits.any(-1).all()  # every view is a (possibly mirrored) shift
    mirrored = hits[..., k:].any(-1)
    assert 0.25 < mirrored.float().mean() < 0.75  # about half of them are mirrored


def test_pool_rejects_zero_views(images):
    with pytest.raises(ValueError, match="views"):
        augment_pool(images, views=0, seed=0, flip=False)


# --- training over a pool ----------------------------------------------------------------------------------


class Recorder(nn.Module):
    """A linear classifier that records every input batch it sees."""

    def __init__(self, features: int, classes: int):
        super().__init__()
        self.fc = nn.Linear(features, classes)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        if self.training:
            self.seen.append(x.detach().clone())
        return self.fc(x.flatten(1))


def id_pool(views: int, n: int) -> torch.Tensor:
    """A pool whose image (v, i) is filled with the number ``v * n + i``: every batch says which views it holds."""
    ids = torch.arange(views * n, dtype=torch.float32).reshape(views, n, 1, 1, 1)
    return ids.expand(views, n, 1, 2, 2).contiguous()


OPT = Optim(epochs=2, lr=0.05, batch_size=16, grad_clip=None)


def test_fit_trains_over_a_pool():
    views, n = 3, 40
    gen = torch.Generator().manual_seed(0)
    pool = torch.randn(views, n, 1, 4, 4, generator=gen)
    y = torch.randint(0, 3, (n,), generator=gen)
    torch.manual_seed(0)
    model = Recorder(16, 3)
    before = model.fc.weight.detach().clone()
    losses = fit(model, pool, y, OPT, seed=0)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(before, model.fc.weight)
    assert all(b.shape[1:] == (1, 4, 4) for b in model.seen)  # 4-D batches of single views


def ids_seen(model: Recorder) -> list[list[int]]:
    return [b[:, 0, 0, 0].long().tolist() for b in model.seen]


def test_every_epoch_shows_each_image_once_in_one_of_its_views():
    views, n = 4, 40
    pool = id_pool(views, n)
    y = torch.zeros(n, dtype=torch.long)
    model = Recorder(4, 2)
    fit(model, pool, y, Optim(epochs=3, lr=0.01, batch_size=8), seed=5)
    per_epoch = len(model.seen) // 3
    ids = ids_seen(model)
    used_views = set()
    for e in range(3):
        epoch = [i for batch in ids[e * per_epoch:(e + 1) * per_epoch] for i in batch]
        assert sorted(i % n for i in epoch) == list(range(n))
        used_views |= {i // n for i in epoch}
    assert used_views == set(range(views))  # not always the same view


def test_kd_and_plain_runs_see_the_same_views(monkeypatch):
    views, n, classes = 3, 30, 4
    pool = id_pool(views, n)
    y = torch.arange(n) % classes
    # teacher logits whose first entry names the (view, image) they belong to
    logits = torch.zeros(views, n, classes)
    logits[..., 0] = torch.arange(views * n, dtype=torch.float32).reshape(views, n)
    used_logits = []
    logit_loss = autokd.train.logit_loss

    def recording_logit_loss(method, **kw):  # the KD loss the loop builds, recording the teacher logits it gets
        loss = logit_loss(method, **kw)

        def recording(out, teacher, targets):
            used_logits.append(teacher.detach().clone())
            return loss(out, teacher, targets)

        return recording

    monkeypatch.setattr(autokd.train, "logit_loss", recording_logit_loss)
    torch.manual_seed(0)
    plain = Recorder(4, classes)
    fit(plain, pool, y, OPT, seed=11)
    torch.manual_seed(0)
    kd = Recorder(4, classes)
    fit(kd, pool, y, OPT, seed=11, distill=Distillation(logits, temperature=4.0, alpha=0.9))
    assert len(plain.seen) == len(kd.seen) > 0
    for a, b in zip(plain.seen, kd.seen):
        assert torch.equal(a, b)
    # each KD step used the teacher's logits of exactly the views in its batch
    assert [t[:, 0].long().tolist() for t in used_logits] == ids_seen(kd)
    # another seed shows other views
    other = Recorder(4, classes)
    fit(other, pool, y, OPT, seed=12)
    assert ids_seen(other) != ids_seen(plain)


def test_fit_refuses_logits_of_another_shape():
    pool = id_pool(2, 10)
    y = torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="do not match"):
        fit(Recorder(4, 3), pool, y, OPT, seed=0, distill=Distillation(torch.zeros(10, 3), 4.0, 0.5))


# --- prepare_inputs and the cached pool logits -------------------------------------------------------------




def aug_space(tiny: dict, augment) -> dict:
    data = copy.deepcopy(tiny)
    data["train"]["augment"] = augment
    data["train"]["augment_views"] = 2
    # These tests drive the pool-logit mechanics with the tiny space's clean session teacher: say so (the
    # consistent teacher trained on the pool is tested in test_consistent_teacher.py).
    data["distill"]["teacher"]["augment"] = False
    return data


@pytest.fixture(scope="module")
def session_teacher(tiny_space_data):
    """The tiny space's teacher (from the session cache) and the data."""
    sp = space_from_dict(tiny_space_data)
    data = load_dataset(sp.dataset)
    return get_teacher(sp, data), data


@pytest.mark.parametrize("augment", [False, {"choices": [False]}])
def test_no_pool_when_no_trial_can_augment(tiny_space, session_teacher, augment):
    teacher, data = session_teacher
    events = EventLog()
    inputs = prepare_inputs(space_from_dict(aug_space(tiny_space, augment)), data, teacher=teacher, progress=events)
    assert inputs.pool is None and inputs.pool_logits is None
    assert inputs.teacher is teacher and inputs.data is data
    assert events.names() == []


@pytest.mark.parametrize("augment", [True, {"choices": [True, False]}])
def test_pool_and_cached_teacher_logits_when_a_trial_can_augment(tiny_space, session_teacher, tmp_path, augment):
    teacher, data = session_teacher
    teacher = dataclasses.replace(teacher, cache_dir=tmp_path)  # a fresh cache folder for the pool logits
    sp = space_from_dict(aug_space(tiny_space, augment))
    events = EventLog()
    inputs = prepare_inputs(sp, data, teacher=teacher, progress=events)
    n, k = len(data.train_y), data.num_classes
    assert inputs.pool.shape == (2, *data.train_x.shape)
    assert torch.equal(inputs.pool, augment_pool(data.train_x, views=2, seed=0, flip=False))  # digits: no flips
    assert inputs.pool_logits.shape == (2, n, k)
    for v in range(2):
        torch.testing.assert_close(inputs.pool_logits[v], predict(teacher.model, inputs.pool[v]))
    assert events.names() == ["teacher.views", "teacher.views_done"]
    assert teacher.view_accuracy == pytest.approx(
        float((inputs.pool_logits.argmax(-1) == data.train_y).float().mean()))
    files = list(tmp_path.glob(f"{teacher.key}-views-*.pt"))
    assert len(files) == 1

    again_events = EventLog()
    again = prepare_inputs(sp, data, teacher=teacher, progress=again_events)
    assert again_events.names() == ["teacher.views_done"]  # loaded from the file, not recomputed
    assert torch.equal(again.pool_logits, inputs.pool_logits)
    assert list(tmp_path.glob("*")) == files


def test_pool_logits_without_teacher(tiny_space, session_teacher):
    _, data = session_teacher
    inputs = prepare_inputs(space_from_dict(aug_space(tiny_space, True)), data)
    assert inputs.pool.shape[0] == 2 and inputs.pool_logits is None


def test_corrupt_pool_logits_are_set_aside_and_rebuilt(tiny_space, session_teacher, tmp_path):
    teacher, data = session_teacher
    teacher = dataclasses.replace(teacher, cache_dir=tmp_path)
    sp = space_from_dict(aug_space(tiny_space, True))
    good = prepare_inputs(sp, data, teacher=teacher).pool_logits
    (path,) = tmp_path.glob("*-views-*.pt")
    path.write_bytes(b"not a tensor file")
    events = EventLog()
    rebuilt = prepare_inputs(sp, data, teacher=teacher, progress=events).pool_logits
    assert events.names() == ["teacher.corrupt", "teacher.views", "teacher.views_done"]
    assert torch.equal(rebuilt, good)
    assert path.with_name(path.name + ".corrupt").read_bytes() == b"not a tensor file"


def test_pool_key_depends_on_views_and_seed(tiny_space, session_teacher, tmp_path):
    teacher, data = session_teacher
    teacher = dataclasses.replace(teacher, cache_dir=tmp_path)
    prepare_inputs(space_from_dict(aug_space(tiny_space, True)), data, teacher=teacher)
    other = aug_space(tiny_space, True)
    other["train"]["seed"] = 1
    events = EventLog()
    prepare_inputs(space_from_dict(other), data, teacher=teacher, progress=events)
    assert events.names()[0] == "teacher.views"  # another pool: not served from the first file
    assert len(list(tmp_path.glob("*-views-*.pt"))) == 2


# --- run_config: a KD trial and its twin train on the same pool ---------------------------------------------


def test_kd_trial_and_twin_train_on_the_same_pool_and_seeds(tiny_space, session_teacher, monkeypatch):
    import autokd.objective

    teacher, data = session_teacher
    data_space = aug_space(tiny_space, True)
    data_space["model"]["width_mult"] = 0.25
    data_space["compress"] = {"finetune_epochs": 1}
    sp = space_from_dict(data_space)
    inputs = prepare_inputs(sp, data, teacher=teacher)
    calls = []

    def fake_fit(model, x, y, opt, *, seed, distill=None, on_epoch=None):
        calls.append((x, seed, distill))
        return []

    monkeypatch.setattr(autokd.objective, "fit", fake_fit)
    seen = {}
    for kd in (True, False):
        calls.clear()
        params = {"distill.kd": kd}
        run_config(TrialConfig(resolve(sp, params), params), inputs)
        seen[kd] = list(calls)
    assert len(seen[True]) == len(seen[False]) == 2  # train + fine-tune
    for (x_on, seed_on, d_on), (x_off, seed_off, d_off) in zip(seen[True], seen[False]):
        assert x_on is inputs.pool and x_off is inputs.pool
        assert seed_on == seed_off
        assert d_off is None
        assert d_on.logits is inputs.pool_logits
    # One stream per (train.seed, repeat, phase): the fine-tune phase no longer uses train.seed + 1, which would
    # collide with repeat 1's stream.
    assert [s for _, s, _ in seen[True]] == [stream_seed(0, 0, "train"), stream_seed(0, 0, "finetune")]
    assert len({stream_seed(0, r, p) for r in range(4) for p in ("init", "train", "prune", "finetune")}) == 16


def test_augmenting_trial_needs_a_pool(tiny_space, session_teacher):
    _, data = session_teacher
    sp = space_from_dict(aug_space(tiny_space, True))
    params = {"distill.kd": False, "model.width_mult": 0.25}
    with pytest.raises(ValueError, match="view pool"):
        run_config(TrialConfig(resolve(sp, params), params), TrialInputs(data))
