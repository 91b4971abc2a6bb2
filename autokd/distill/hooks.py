"""Forward hooks by module path, and the stage ends of a model matched by spatial resolution.

Written here rather than taken from torchdistill: its ``core.forward_hook`` imports its model zoo and torchvision
(~3 s), and all a feature method needs is a tensor per module path, in the ``{path: {'input'|'output': tensor}}``
dict that torchdistill's loss modules read.

Hooks are registered by *path*, not held on module objects, because compression swaps modules: quantization
replaces every conv and linear by a fake-quant wrapper with ``setattr`` (autokd's wrapper happens to take the
old layer's hooks along; another would drop them). :meth:`Tap.attach` leaves exactly one hook on whatever module
sits at each path now, :meth:`Tap.close` removes them all, and :meth:`Tap.take` refuses to hand back a step's
features when one was not captured (a silent miss would train without the KD term).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

IO = ("input", "output")


class Tap:
    """Forward hooks on ``model``'s modules at ``paths`` that keep each one's input or output of the last forward.

    Use as a context manager (or call :meth:`close`): the hooks are removed on exit, so a model saved or exported
    afterwards carries none."""

    def __init__(self, model: nn.Module, paths: Sequence[str], io: str = "output"):
        if io not in IO:
            raise ValueError(f"io must be one of {', '.join(IO)} (got {io!r})")
        self.paths, self.io = tuple(dict.fromkeys(paths)), io
        self.seen: dict[str, torch.Tensor] = {}
        self._handles: list = []
        self._model: nn.Module | None = None
        self.attach(model)

    def attach(self, model: nn.Module) -> None:
        """(Re-)register the hooks on the modules now at ``paths`` in ``model``, so each has exactly one of this
        tap's hooks (after a module was replaced). Every path is looked up before any hook is registered."""
        modules = []
        for path in self.paths:
            try:
                modules.append(model.get_submodule(path))
            except AttributeError as exc:
                raise ValueError(f"the model has no module {path!r}") from exc
        self.close()
        self._model = model
        for path, module in zip(self.paths, modules):
            self._handles.append(module.register_forward_hook(self._keeper(path)))

    def _keeper(self, path: str):
        def keep(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            self.seen[path] = inputs[0] if self.io == "input" else output
        keep.tap = self  # type: ignore[attr-defined]  # (see close)
        return keep

    def take(self) -> dict[str, dict[str, torch.Tensor]]:
        """What the last forward left at every path, as torchdistill's io dict; cleared for the next step."""
        missing = [p for p in self.paths if p not in self.seen]
        if missing:
            raise RuntimeError(f"no features were captured at {', '.join(missing)}: a module was replaced "
                               "without re-attaching the hooks (Tap.attach)")
        found, self.seen = self.seen, {}
        return {p: {self.io: t} for p, t in found.items()}

    def close(self) -> None:
        """Remove this tap's hooks, including copies of them: autokd's quantization wrapper takes over the
        attributes of the layer it replaces, hooks included (:func:`autokd.compress.quantize.wrap_layer`), and a
        hook handle only reaches the dict of the module it was registered on. Hence the one private read
        (``_forward_hooks``) of the modules now at ``paths``."""
        for h in self._handles:
            h.remove()
        if self._model is not None:
            for path in self.paths:
                try:
                    module = self._model.get_submodule(path)
                except AttributeError:
                    continue
                for key, fn in list(module._forward_hooks.items()):
                    if getattr(fn, "tap", None) is self:
                        del module._forward_hooks[key]
        self._handles, self.seen = [], {}

    def __enter__(self) -> Tap:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class StageEnd:
    """The last module of ``model.features`` at one spatial resolution that holds a BatchNorm (a stage's end:
    its output channels are that BatchNorm's, which is how pruning's kept channels are followed)."""

    path: str
    channels: int
    size: tuple[int, int]


def stage_ends(model: nn.Module, image_shape: tuple[int, int, int]) -> list[StageEnd]:
    """The stage ends of ``model`` (a registry family: its body is the ``features`` sequence), largest
    resolution first, measured by one forward of a blank image of ``image_shape`` (C, H, W)."""
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        return []
    paths = [f"features.{i}" for i, m in enumerate(features)
             if any(isinstance(x, nn.BatchNorm2d) for x in m.modules())]
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        with Tap(model, paths) as tap, torch.no_grad():
            model(torch.zeros(1, *image_shape, device=device))
            shapes = {p: tuple(v["output"].shape[1:]) for p, v in tap.take().items()}
    finally:
        model.train(was_training)
    last: dict[tuple[int, int], StageEnd] = {}
    for p in paths:  # in order: a later module at the same resolution ends the stage
        c, h, w = shapes[p]
        last[(h, w)] = StageEnd(p, c, (h, w))
    return sorted(last.values(), key=lambda e: -(e.size[0] * e.size[1]))


LAYER_KEYWORDS = ("all", "first", "middle", "last")


def match_stages(student: Sequence[StageEnd], teacher: Sequence[StageEnd],
                 layers: str | int) -> list[tuple[StageEnd, StageEnd]]:
    """The (student, teacher) stage ends hinted: the resolutions both have (largest first), then ``layers`` of
    them: ``all``, ``first`` (largest), ``middle``, ``last`` (smallest), or one index into that shared list.
    Raises ``ValueError`` (saying what is shared) when nothing matches."""
    by_size = {e.size: e for e in teacher}
    shared = [(s, by_size[s.size]) for s in student if s.size in by_size]
    sizes = ", ".join(f"{s.size[0]}x{s.size[1]}" for s, _ in shared) or "none"
    if not shared:
        raise ValueError("the student and the teacher share no feature resolution (student: "
                         f"{', '.join(f'{e.size[0]}x{e.size[1]}' for e in student) or 'none'}; teacher: "
                         f"{', '.join(f'{e.size[0]}x{e.size[1]}' for e in teacher) or 'none'})")
    if isinstance(layers, bool) or not isinstance(layers, (str, int)):
        raise ValueError(f"layers must be one of {', '.join(LAYER_KEYWORDS)} or a level index (got {layers!r})")
    if isinstance(layers, int):
        if not 0 <= layers < len(shared):
            raise ValueError(f"level {layers} is not shared by the student and the teacher: they share "
                             f"{len(shared)} resolution{'s' if len(shared) != 1 else ''} ({sizes}), levels 0-"
                             f"{len(shared) - 1}")
        return [shared[layers]]
    picks = {"all": shared, "first": shared[:1], "middle": [shared[len(shared) // 2]], "last": shared[-1:]}
    if layers not in picks:
        raise ValueError(f"layers must be one of {', '.join(LAYER_KEYWORDS)} or a level index (got {layers!r})")
    return picks[layers]


def last_batchnorm(module: nn.Module) -> nn.BatchNorm2d:
    """The BatchNorm whose channels are ``module``'s output channels (the last one in it)."""
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        raise ValueError(f"{type(module).__name__} holds no BatchNorm2d")
    return bns[-1]
