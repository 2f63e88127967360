"""Caricatures: images optimised so a layer's activation points the way a real image's does.

A caricature (lucid's term) of image I at layer L is an image X maximising
``dot(L(X), L(I)) * cos(L(X), L(I)) ** cossim_pow`` over the whole (C, H, W) activation.
This is lucid/lucent's feature-inversion recipe re-implemented with torch alone (lucent pins
an old kornia and hard-codes ``cuda:0``):

- image parametrisation: a Fourier spectrum scaled by 1/f (decay_power 1), lucid's colour
  decorrelation, then a sigmoid to [0, 1];
- transforms each step: pad 12 (constant 0.5) → jitter 8 → random scale (0.90..1.10) and
  rotation (-10..10°, 0° weighted as lucid's) → jitter 4, then upsampling to the model's input
  size and the *model's own* normalisation (the original tool always used ImageNet's);
- Adam, lr 0.05, 512 steps (1024 for ``layer4*``: see `default_steps`).

Batches and reproducibility. `caricatures` optimises many caricatures at once, one per
target, possibly at different layers (`layer_fn` taps several layers in one forward pass).
Every item starts from the same seeded noise and sees the same random transforms (lucid
draws one transform per step for the whole batch, too), the loss is a sum over items, the
model is in eval mode and Adam is element-wise: so an item's result does not depend on
which other items share its batch, up to floating-point differences of batched kernels.
All randomness comes from one CPU ``torch.Generator`` seeded with ``params.seed``: on CPU
the same seed gives byte-identical images.

How callers pass models:

- a torchvision (or any) ``nn.Module``: ``compute(net, "layer3.2.conv2", images,
  mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))``; names may be dotted or in the
  original tool's underscore form (``layer3_2_conv2``).
- a `lib.features.backbones.Backbone`: ``compute(**backbone_inputs(bb), layer="p4", images=...)``;
  the level names index the dict the backbone's module returns, and its pixel statistics
  and channel order (BGR for detectron2) become the normalisation. Modules inside a
  torch.fx-traced backbone (``resnet50``/``resnet18`` stages) are only reachable where the
  trace kept them as calls (leaf layers such as ``layer3.1.conv2``); use a level otherwise.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lib.runtime.errors import GapscopeError

log = logging.getLogger(__name__)

Tensor = torch.Tensor

# lucid's square root of the ImageNet colour correlation matrix (from its SVD), normalised
# by its largest column norm.
COLOR_CORRELATION_SVD_SQRT = np.asarray(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32
)
COLOR_CORRELATION = COLOR_CORRELATION_SVD_SQRT / np.max(
    np.linalg.norm(COLOR_CORRELATION_SVD_SQRT, axis=0)
)
FFT_MAGIC = 4.0  # lucid divides the image by 4 ("reduces saturation")
INIT_SD = 0.01  # lucid's initial standard deviation of the parameters
COS_FLOOR = 0.1  # lucid's _dot_cossim floors the cosine at 0.1 before raising it to a power
COS_EPS = 1e-4  # and adds 1e-4 to both norms
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".npy"}


@dataclass(frozen=True)
class CaricatureParams:
    size: int = 128  # side of the optimised image (lucent's default)
    input_size: int = 224  # side of the target image and of the model's input
    steps: int = 512  # `default_steps(layer)`: 1024 for the deepest stage
    lr: float = 0.05  # Adam
    cossim_pow: float = 0.0  # objective = dot * max(cos, 0.1) ** cossim_pow
    seed: int = 0
    decorrelate: bool = True  # lucid's colour decorrelation
    fft: bool = True  # Fourier parametrisation, 1/f spectrum scaling
    decay_power: float = 1.0
    pad: int = 12  # constant 0.5
    jitter: int = 8  # first jitter; the last one is `jitter_after`
    scales: tuple[float, ...] = tuple(1 + (i - 5) / 50 for i in range(11))
    angles: tuple[float, ...] = tuple(range(-10, 11)) + (0,) * 5  # lucid's standard_transforms
    jitter_after: int = 4
    crop: bool = True  # end with a centre crop back to `size` (lucid's caricature recipe)

    def __post_init__(self):
        if self.size < 8 or self.input_size < 8:
            raise GapscopeError(f"caricature sizes must be at least 8 (got {self.size})")
        if self.steps < 0:
            raise GapscopeError(f"caricature steps must be >= 0 (got {self.steps})")
        if min(self.pad, self.jitter, self.jitter_after) < 0:
            raise GapscopeError("caricature pad and jitter must be >= 0")


def default_steps(layer: str) -> int:
    """The original tool's step count: 1024 for the deepest ResNet stage, 512 elsewhere."""
    return 1024 if layer.replace("_", ".").startswith("layer4") else 512


@dataclass
class CaricatureResult:
    images: np.ndarray  # (B, size, size, 3) float32 in [0, 1]
    cosine: np.ndarray  # (B,) cos(activation of the caricature, target)
    start_cosine: np.ndarray  # (B,) the same for the starting image
    objective: np.ndarray  # (B,) final objective (un-transformed caricature)
    layers: tuple[str, ...] = ()  # per item, dotted names (filled by `compute`)
    params: CaricatureParams = field(default_factory=CaricatureParams)
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.images)

    def take(self, index) -> CaricatureResult:
        """The items at `index` (indices or a boolean mask)."""
        idx = np.arange(len(self))[index]
        return CaricatureResult(
            images=self.images[idx],
            cosine=self.cosine[idx],
            start_cosine=self.start_cosine[idx],
            objective=self.objective[idx],
            layers=tuple(self.layers[i] for i in idx) if self.layers else (),
            params=self.params,
            seconds=self.seconds,
        )


# --- layer names --------------------------------------------------------------------------


def layer_names(model: torch.nn.Module) -> list[str]:
    """Dotted names of every submodule (e.g. ``layer3.2.conv2``), the root excluded."""
    return [name for name, _ in model.named_modules() if name]


def underscore(name: str) -> str:
    """The original tool's form of a layer name: ``layer3.2.conv2`` → ``layer3_2_conv2``."""
    return name.replace(".", "_")


def resolve_layer(model: torch.nn.Module, name: str, levels: Sequence[str] = ()) -> str:
    """A dotted module name or a level name for `name`, given dotted or underscored.

    `levels` are names of the model's outputs (a Backbone's ``levels``); they win over a
    module of the same name, as the output is what a backbone means by its level.
    """
    if name in levels:
        return name
    names = layer_names(model)
    if name in names:
        return name
    by_underscore: dict[str, list[str]] = {}
    for n in names:
        by_underscore.setdefault(underscore(n), []).append(n)
    hits = by_underscore.get(underscore(name), [])
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise GapscopeError(f"layer {name!r} is ambiguous: write it with dots, one of {hits}")
    candidates = list(levels) + names
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    close += [
        by_underscore[u][0]
        for u in difflib.get_close_matches(underscore(name), list(by_underscore), n=5, cutoff=0.5)
    ]
    close = list(dict.fromkeys(close))[:5]
    hint = f"closest: {', '.join(close)}" if close else f"e.g. {', '.join(candidates[:8])}"
    raise GapscopeError(
        f"unknown layer {name!r} in {type(model).__name__} ({len(candidates)} names; {hint})"
    )


class _Stop(Exception):
    """Raised from a hook to skip the rest of a forward pass once every tap has fired."""


class FeatureTap:
    """Context manager storing one layer's output on every forward pass.

    `name` is a dotted module name (the output of its last call in the pass is kept: a
    module such as ResNet's shared ``relu`` may run several times), or a level in `levels`
    (the model's own output indexed by it: a dict key, or an int for a list/tuple). Outputs
    are cloned, so in-place operations after the layer (``ReLU(inplace=True)``) do not
    change what was tapped.
    """

    def __init__(self, model: torch.nn.Module, name: str, levels: Sequence[str] = ()):
        self.model = model
        self.name = resolve_layer(model, name, levels)
        self.is_level = self.name in levels
        self.module = model if self.is_level else model.get_submodule(self.name)
        self.output: Tensor | None = None
        self.calls = 0
        self.on_call: Callable[[FeatureTap], None] | None = None
        self._handle = None

    def _hook(self, module, inputs, output):
        if self.is_level:
            output = output[int(self.name) if isinstance(output, (list, tuple)) else self.name]
        if not isinstance(output, Tensor):
            raise GapscopeError(
                f"layer {self.name!r} outputs {type(output).__name__}, not a tensor: "
                "choose a layer (or level) that outputs a feature map"
            )
        self.output = output.clone()
        self.calls += 1
        if self.on_call is not None:
            self.on_call(self)

    def __enter__(self) -> FeatureTap:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def reset(self) -> None:
        self.output, self.calls = None, 0


class LayerFn:
    """``x → [activation of each layer]``: the `model_fn` that `caricatures` takes.

    Hooks are registered while the object lives; call `close` (or use it as a context
    manager) to remove them. The first call runs the whole model and counts how often each
    tapped module runs; later calls stop the forward pass once the last tap has its final
    output, so a caricature at ``layer1`` does not pay for ``layer4``.
    """

    def __init__(self, model: torch.nn.Module, layers: Sequence[str], levels: Sequence[str] = ()):
        self.model = model
        self.taps = [FeatureTap(model, name, levels) for name in layers]
        self.layers = [t.name for t in self.taps]
        self.expected: list[int] | None = None
        for tap in self.taps:
            tap.__enter__()
            if not tap.is_level:
                tap.on_call = self._maybe_stop

    def _maybe_stop(self, _tap) -> None:
        if self.expected is not None and all(
            t.calls >= n for t, n in zip(self.taps, self.expected, strict=True)
        ):
            raise _Stop

    def __call__(self, x: Tensor) -> list[Tensor]:
        for tap in self.taps:
            tap.reset()
        try:
            self.model(x)
        except _Stop:
            pass
        missing = [t.name for t in self.taps if t.output is None]
        if missing:
            raise GapscopeError(
                f"layers {missing} never ran as modules in {type(self.model).__name__}'s "
                "forward (a traced model inlines them): choose a leaf layer or a level"
            )
        if self.expected is None:
            self.expected = [t.calls for t in self.taps]
        return [t.output for t in self.taps]

    def close(self) -> None:
        for tap in self.taps:
            tap.__exit__()

    def __enter__(self) -> LayerFn:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def layer_fn(model: torch.nn.Module, layers: str | Sequence[str], levels: Sequence[str] = ()):
    """A `LayerFn` for one layer name or several (dotted, underscored or levels); for a
    TorchScript module, which refuses hooks, a
    `lib.features.backbones.torchscript.ScriptLayerFn`."""
    names = [layers] if isinstance(layers, str) else list(layers)
    if isinstance(model, torch.jit.ScriptModule):
        from lib.features.backbones.torchscript import ScriptLayerFn

        return ScriptLayerFn(model, [resolve_layer(model, name) for name in names])
    return LayerFn(model, names, levels)


@contextmanager
def frozen(model: torch.nn.Module):
    """Eval mode and no parameter gradients inside; every flag restored after."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


# --- parametrisation ----------------------------------------------------------------------


def rfft2d_freqs(h: int, w: int) -> np.ndarray:
    """Spatial frequency of each rfft2 coefficient, shape (h, w // 2 + 1)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy)


def spectrum_scale(h: int, w: int, decay_power: float = 1.0) -> Tensor:
    """lucid's 1/f scaling of the spectrum, (h, w // 2 + 1); the DC term gets max(h, w)."""
    freqs = rfft2d_freqs(h, w)
    return torch.tensor(1.0 / np.maximum(freqs, 1.0 / max(h, w)) ** decay_power).float()


def decorrelate_colors(x: Tensor) -> Tensor:
    """(B, 3, H, W) decorrelated colour space → RGB (before the sigmoid)."""
    m = torch.as_tensor(COLOR_CORRELATION, device=x.device, dtype=x.dtype)
    return torch.einsum("ij,bjhw->bihw", m, x)


def correlate_colors(x: Tensor) -> Tensor:
    """The inverse of `decorrelate_colors`."""
    m = torch.as_tensor(np.linalg.inv(COLOR_CORRELATION), device=x.device, dtype=x.dtype)
    return torch.einsum("ij,bjhw->bihw", m, x)


def image_param(
    batch: int,
    size: int,
    fft: bool,
    decorrelate: bool,
    generator: torch.Generator,
    decay_power: float = 1.0,
    device: str | torch.device = "cpu",
    same_init: bool = True,
) -> tuple[list[Tensor], Callable[[], Tensor]]:
    """Parameters of `batch` images and ``to_rgb() → (batch, 3, size, size)`` in [0, 1].

    The noise is drawn on the CPU from `generator` (so a seed means the same start on any
    device); with `same_init` one draw is repeated for every item, so an item's start does
    not depend on its position in the batch.
    """
    n = 1 if same_init else batch
    if fft:
        scale = spectrum_scale(size, size, decay_power).to(device)[None, None, ..., None]
        shape = (n, 3, size, size // 2 + 1, 2)
    else:
        shape = (n, 3, size, size)
    init = torch.randn(shape, generator=generator) * INIT_SD
    param = init.expand(batch, *shape[1:]).clone().to(device).requires_grad_(True)

    def to_rgb() -> Tensor:
        if fft:
            spectrum = torch.view_as_complex((scale * param).contiguous())
            x = torch.fft.irfftn(spectrum, s=(size, size), norm="ortho") / FFT_MAGIC
        else:
            x = param
        if decorrelate:
            x = decorrelate_colors(x)
        return torch.sigmoid(x)

    return [param], to_rgb


# --- transforms ---------------------------------------------------------------------------


def _choice(values: Sequence[float], generator: torch.Generator) -> float:
    return float(values[int(torch.randint(len(values), (1,), generator=generator))])


def _jitter(x: Tensor, d: int, generator: torch.Generator) -> Tensor:
    """lucid's jitter: a random crop d pixels smaller in each direction."""
    if d <= 0:
        return x
    dy, dx = (int(v) for v in torch.randint(d + 1, (2,), generator=generator))
    h, w = x.shape[-2:]
    return x[..., dy : dy + h - d, dx : dx + w - d]


def transforms(x: Tensor, params: CaricatureParams, generator: torch.Generator) -> Tensor:
    """pad (0.5) → jitter → scale and rotate (one affine resampling) → jitter.

    One random draw per call serves the whole batch. With ``params.crop`` (the default, as
    lucid's caricature recipe) the result is centre-cropped back to the input's side, so
    its framing matches the target image's; without, its side is side + 2·pad − jitter −
    jitter_after (lucent keeps the larger frame, which shrinks the content). Scale s
    enlarges the content by s about the centre; the corners the rotation or a shrink
    uncover are 0, as in lucent (kornia's warp_affine).
    """
    side = tuple(x.shape[-2:])
    x = F.pad(x, [params.pad] * 4, mode="constant", value=0.5)
    x = _jitter(x, params.jitter, generator)
    scale = _choice(params.scales, generator)
    angle = np.deg2rad(_choice(params.angles, generator))
    if scale != 1.0 or angle != 0.0:
        c, s = np.cos(angle) / scale, np.sin(angle) / scale
        theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = _jitter(x, params.jitter_after, generator)
    return center_crop(x, *side) if params.crop else x


def center_crop(x: Tensor, height: int, width: int) -> Tensor:
    """lucid's crop_or_pad_to: the central height×width window (padded with 0.5 if smaller)."""
    h, w = x.shape[-2:]
    if h < height or w < width:
        ph, pw = max(height - h, 0), max(width - w, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], value=0.5)
        h, w = x.shape[-2:]
    top, left = (h - height) // 2, (w - width) // 2
    return x[..., top : top + height, left : left + width]


def upsample(x: Tensor, size: int) -> Tensor:
    """To the model's input side, as lucent does (bilinear, align_corners=True)."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)


def normalizer(
    mean: Sequence[float], std: Sequence[float], bgr: bool = False
) -> Callable[[Tensor], Tensor]:
    """RGB in [0, 1] → the model's input: channels flipped for BGR models, then (x-mean)/std.

    `mean` and `std` are in 0..1 units and in the model's channel order.
    """
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def normalize(x: Tensor) -> Tensor:
        if bgr:
            x = x.flip(1)
        return (x - m.to(x.device)) / s.to(x.device)

    return normalize


# --- objective and optimisation -----------------------------------------------------------


def cosine(act: Tensor, target: Tensor) -> Tensor:
    """Per-item cosine similarity over all non-batch dimensions."""
    a, t = act.flatten(1), target.flatten(1)
    return (a * t).sum(1) / (a.norm(dim=1) + COS_EPS) / (t.norm(dim=1) + COS_EPS)


def objective(act: Tensor, target: Tensor, cossim_pow: float) -> Tensor:
    """Per-item value to maximise: ``dot(act, target) * max(cos, 0.1) ** cossim_pow``.

    Sums run over C·H·W. The cosine divides by both norms (lucid's ``_dot_cossim``;
    lucent's ``dot_compare`` divided by the target's norm only) and is floored at 0.1 as
    lucid does, so a negative cosine neither flips the sign of the objective nor makes a
    fractional power undefined. With ``cossim_pow == 0`` it is the plain dot product.
    """
    a, t = act.flatten(1), target.flatten(1)
    dot = (a * t).sum(1)
    if cossim_pow == 0:
        return dot
    return dot * cosine(act, target).clamp(min=COS_FLOOR) ** cossim_pow


def _as_list(x) -> list[Tensor]:
    return [x] if isinstance(x, Tensor) else list(x)


@dataclass
class _Pairs:
    """(activation, target) per layer of a batch of images: item i of layer g is scored on
    layer g's output, the items being the targets in order, layer after layer."""

    model_fn: Callable[[Tensor], Tensor | Sequence[Tensor]]
    normalize: Callable[[Tensor], Tensor]
    input_size: int
    groups: list[Tensor]

    def __call__(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        acts = _as_list(self.model_fn(self.normalize(upsample(x, self.input_size))))
        if len(acts) != len(self.groups):
            raise ValueError(f"model_fn returned {len(acts)} activations for {len(self.groups)}")
        out, start = [], 0
        for act, target in zip(acts, self.groups, strict=True):
            act = act[start : start + len(target)]
            if act.shape != target.shape:
                raise ValueError(f"activation {tuple(act.shape)} vs target {tuple(target.shape)}")
            out.append((act.float(), target))
            start += len(target)
        return out


def _evaluate(pairs: _Pairs, to_rgb, cossim_pow: float) -> tuple[Tensor, Tensor]:
    """(cosine, objective) per item of the images as they are now, without gradients."""
    with torch.no_grad():
        scored = pairs(to_rgb())
        cos = torch.cat([cosine(a, t) for a, t in scored])
        obj = torch.cat([objective(a, t, cossim_pow) for a, t in scored])
    return cos, obj


def caricatures(
    model_fn: Callable[[Tensor], Tensor | Sequence[Tensor]],
    targets: Tensor | Sequence[Tensor],
    params: CaricatureParams,
    normalize: Callable[[Tensor], Tensor],
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> CaricatureResult:
    """Optimise one caricature per target, all in one batch.

    `model_fn` maps a normalised (B, 3, input_size, input_size) batch to an activation, or
    to a list of activations (one per layer, e.g. a `LayerFn`); `targets` is then one
    tensor (N, ...) or a list of them, one per layer. The items are the targets in order
    (layer after layer); item i of layer g is scored on layer g's output. The model must be
    on `device`, in eval mode (see `frozen`); gradients are taken with respect to the image
    parameters only. `progress(step, steps)` is called after each step.
    """
    t0 = time.perf_counter()
    groups = [t.detach().to(device, torch.float32) for t in _as_list(targets)]
    batch = sum(len(t) for t in groups)
    if batch == 0:
        raise GapscopeError("no caricature targets given")
    generator = torch.Generator().manual_seed(params.seed)
    image_params, to_rgb = image_param(
        batch, params.size, params.fft, params.decorrelate, generator, params.decay_power, device
    )
    pairs = _Pairs(model_fn, normalize, params.input_size, groups)
    start_cos, _ = _evaluate(pairs, to_rgb, params.cossim_pow)
    optimizer = torch.optim.Adam(image_params, lr=params.lr)
    for step in range(params.steps):
        x = transforms(to_rgb(), params, generator)
        loss = -sum(objective(a, t, params.cossim_pow).sum() for a, t in pairs(x))
        grads = torch.autograd.grad(loss, image_params)
        for p, g in zip(image_params, grads, strict=True):
            p.grad = g
        optimizer.step()
        if progress is not None:
            progress(step + 1, params.steps)
    end_cos, end_obj = _evaluate(pairs, to_rgb, params.cossim_pow)
    with torch.no_grad():
        images = to_rgb().permute(0, 2, 3, 1).float().cpu().numpy()
    seconds = time.perf_counter() - t0
    mean = float(start_cos.mean()), float(end_cos.mean())
    how = "%d caricatures, %d steps in %.1f s: cosine %.3f -> %.3f (mean)"
    log.info(how, batch, params.steps, seconds, *mean)
    return CaricatureResult(
        images=np.ascontiguousarray(images, dtype=np.float32),
        cosine=end_cos.cpu().numpy().astype(np.float32),
        start_cosine=start_cos.cpu().numpy().astype(np.float32),
        objective=end_obj.cpu().numpy().astype(np.float32),
        params=params,
        seconds=seconds,
    )


# --- convenience --------------------------------------------------------------------------


def backbone_inputs(backbone) -> dict:
    """`compute` keyword arguments for a `lib.features.backbones.Backbone`: its module, levels, and
    normalisation (its 0..255 pixel statistics in 0..1 units, its channel order)."""
    return {
        "model": backbone.module,
        "mean": tuple(v / 255 for v in backbone.pixel_mean),
        "std": tuple(v / 255 for v in backbone.pixel_std),
        "bgr": backbone.input_format == "BGR",
        "levels": tuple(backbone.levels),
    }


def target_batch(images: np.ndarray, size: int, device="cpu") -> Tensor:
    """(N, H, W, 3) uint8 → (N, 3, size, size) RGB in [0, 1], resized bilinearly
    (antialiased when shrinking); non-square images are stretched to a square."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise GapscopeError(
            f"caricature images must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}"
        )
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float()
    x = x / 255.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    return x.clamp(0, 1)


def compute(
    model: torch.nn.Module,
    layer: str | Sequence[str],
    images: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    params: CaricatureParams | None = None,
    *,
    bgr: bool = False,
    levels: Sequence[str] = (),
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> CaricatureResult:
    """Caricatures of `images` at `layer` (or at each of several layers, items layer-major).

    The target of each image is the layer's activation for the image resized to
    ``params.input_size``, normalised with `mean`/`std` (0..1 units, the model's channel
    order; `bgr` flips RGB first). The model is moved to `device` and run frozen (eval, no
    parameter gradients; both restored after). `result.layers` names each item's layer.
    """
    params = params or CaricatureParams()
    layers = [layer] if isinstance(layer, str) else list(layer)
    normalize = normalizer(mean, std, bgr)
    model.to(device)
    with frozen(model), layer_fn(model, layers, levels) as fn:
        with torch.no_grad():
            targets = fn(normalize(target_batch(images, params.input_size, device)))
        result = caricatures(fn, targets, params, normalize, device, progress)
        result.layers = tuple(name for name in fn.layers for _ in range(len(images)))
    return result


def _safe(name: str) -> str:
    name = Path(str(name).replace("\\", "/")).name
    if Path(name).suffix.lower() in IMAGE_SUFFIXES:
        name = Path(name).stem
    return "".join(c if c.isalnum() or c in "-_.+" else "-" for c in name) or "-"


def save(
    result: CaricatureResult,
    out_dir: Path,
    model_name: str,
    layer: str | None,
    image_names: Sequence[str],
) -> list[Path]:
    """Write ``{model}_{layer}_{image}.png`` and ``.npy`` (size×size×3 float32 in [0, 1]).

    The layer is written in underscore form, as the original tool did; with ``layer=None``
    each item's own layer (`result.layers`) is used. Image names lose any directory and
    image extension. Returns the paths written, png and npy per item.
    """
    from PIL import Image

    if len(image_names) != len(result):
        raise GapscopeError(f"{len(image_names)} image names for {len(result)} caricatures")
    if layer is None and not result.layers:
        raise GapscopeError("say which layer these caricatures are of")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(image_names):
        lay = underscore(layer if layer is not None else result.layers[i])
        stem = f"{_safe(model_name)}_{_safe(lay)}_{_safe(name)}"
        img = np.clip(result.images[i], 0.0, 1.0).astype(np.float32)
        png, npy = out_dir / f"{stem}.png", out_dir / f"{stem}.npy"
        Image.fromarray(np.round(img * 255).astype(np.uint8)).save(png)
        np.save(npy, img)
        paths += [png, npy]
    log.info("wrote %d caricatures to %s", len(image_names), out_dir)
    return paths
