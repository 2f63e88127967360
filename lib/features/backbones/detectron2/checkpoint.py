"""detectron2 checkpoints read without running anything in them, renamed to detectron2's
names, checked against the config, and loaded strictly into the converted backbone.

Formats: `model_final.pth` (torch.load with weights_only=True), Detectron2 model-zoo
`.pkl` and Caffe2 Detectron `.pkl` (a restricted unpickler that builds numpy arrays and
nothing else; Caffe2 blob names renamed as detectron2's c2 conversion renames them).
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lib.features.backbones.base import load_into
from lib.features.backbones.detectron2.config import Arch
from lib.features.backbones.detectron2.modules import Detectron2FPN
from lib.runtime.errors import GapscopeError, first_line

log = logging.getLogger(__name__)

# Caffe2 blob names that, once renamed, belong to the backbone (anything else is a head)
C2_BACKBONE = re.compile(r"^(stem\.|res\d|conv1\.|fpn)")


# ----------------------------------------------------------------------------- reading files


def _numpy_globals() -> dict[tuple[str, str], Any]:
    reconstruct = np.zeros(1).__reduce__()[0]  # numpy(._)core.multiarray._reconstruct
    scalar = np.float32(0).__reduce__()[0]  # numpy(._)core.multiarray.scalar
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # protocol 5: numpy(._)core.numeric._frombuffer
    import _codecs
    from collections import OrderedDict

    allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): OrderedDict,
        # protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, latin1)
        ("_codecs", "encode"): _codecs.encode,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = reconstruct
        allowed[(mod, "scalar")] = scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, numbers and numpy arrays; refuses every other global,
    so nothing named in the file is imported or called."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused persistent id (not a model-zoo pickle)")


def _read_pkl(path: Path) -> Any:
    try:
        with open(path, "rb") as fh:
            return _RestrictedUnpickler(fh, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        msg = first_line(exc)
        if msg.startswith("refused"):
            raise GapscopeError(
                f"checkpoint {path} is not a plain model-zoo pickle ({msg}); nothing in it "
                "was run: give the detector's model_final.pth or a model-zoo .pkl"
            ) from None
        raise GapscopeError(f"checkpoint {path} is truncated or corrupt ({msg})") from None
    except Exception as exc:  # noqa: BLE001 - any failure of a user's file is a user error
        raise GapscopeError(
            f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}: {first_line(exc)})"
        ) from None


def _read_pth(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        refused = [ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln]
        reason = (refused or lines or [type(exc).__name__])[0].split(". ")[0][:200]
        raise GapscopeError(
            f"checkpoint {path} cannot be read as a PyTorch checkpoint with weights_only=True "
            f"({reason}); nothing in it was run: is it truncated, or not a detectron2 "
            "model_final.pth?"
        ) from None


def _unwrap_pkl(data: Any, path: Path) -> tuple[Any, str, bool]:
    """A .pkl's weights, its format, and whether detectron2 would match names heuristically."""
    if not isinstance(data, dict):
        raise GapscopeError(f"checkpoint {path} holds a {type(data).__name__}, not a dict")
    if "model" in data and "__author__" in data:
        heuristics = bool(data.get("matching_heuristics", False))
        if heuristics and data["__author__"] == "Caffe2":  # detectron2's c2_conversion
            return data["model"], "caffe2-pkl", heuristics
        return data["model"], "detectron2-pkl", heuristics
    # Caffe2 / Detectron1 model zoo: weights under "blobs" (detection models)
    model = data.get("blobs", data)
    if isinstance(model, dict):  # optimizer state, not weights
        model = {k: v for k, v in model.items() if not str(k).endswith("_momentum")}
    return model, "caffe2-pkl", False


def _read_model(path: Path) -> tuple[Any, str, bool]:
    """The weights a file holds, its format, and whether names are matched heuristically."""
    with open(path, "rb") as fh:
        is_zip = fh.read(4) == b"PK\x03\x04"  # torch.save's format, whatever the suffix
    if path.suffix.lower() == ".pkl" and not is_zip:
        return _unwrap_pkl(_read_pkl(path), path)
    data = _read_pth(path)
    model = data.get("model", data) if isinstance(data, dict) else data
    return model, "pth", True  # detectron2 loads .pth checkpoints with its name-matching heuristics


# ----------------------------------------------------------------------------- naming


def _c2_name(name: str) -> str:
    """detectron2's convert_basic_c2_names + the FPN renames of convert_c2_detectron_names
    (the parts that concern the backbone; head names are only recognised as heads)."""
    k = {"pred_b": "linear_b", "pred_w": "linear_w"}.get(name, name)
    k = k.replace("_", ".")
    for pattern, repl in (
        (r"\.b$", ".bias"),
        (r"\.w$", ".weight"),
        (r"bn\.s$", "norm.weight"),
        (r"bn\.bias$", "norm.bias"),
        (r"bn\.rm", "norm.running_mean"),
        (r"bn\.running.mean$", "norm.running_mean"),
        (r"bn\.riv$", "norm.running_var"),
        (r"bn\.running.var$", "norm.running_var"),
        (r"bn\.gamma$", "norm.weight"),
        (r"bn\.beta$", "norm.bias"),
        (r"gn\.s$", "norm.weight"),
        (r"gn\.bias$", "norm.bias"),
        (r"^res\.conv1\.norm\.", "conv1.norm."),
        (r"^conv1\.", "stem.conv1."),
    ):
        k = re.sub(pattern, repl, k)
    for old, new in (
        (".branch1.", ".shortcut."),
        (".branch2a.", ".conv1."),
        (".branch2b.", ".conv2."),
        (".branch2c.", ".conv3."),
    ):
        k = k.replace(old, new)
    splits = k.split(".")
    norm = ".norm" if "norm" in splits else ""
    if k.startswith("fpn.inner.") and len(splits) > 3:
        return f"fpn_lateral{splits[2][len('res') :]}{norm}.{splits[-1]}"
    if k.startswith("fpn.res") and len(splits) > 2:
        return f"fpn_output{splits[1][len('res') :]}{norm}.{splits[-1]}"
    return k


def _to_tensor(key: str, value: Any, path: Path) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray | np.generic) and np.asarray(value).dtype.kind in "fiub":
        return torch.from_numpy(np.array(value, copy=True))
    raise GapscopeError(
        f"checkpoint {path}: {key} holds a {type(value).__name__}, not an array of numbers"
    )


def _rename_caffe2(model: dict, path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The backbone's Caffe2 blobs under detectron2's names, and the head blobs dropped."""
    renamed = {_c2_name(k): k for k in model}
    if len(renamed) != len(model):
        raise GapscopeError(f"checkpoint {path}: two Caffe2 names map to one detectron2 name")
    # RPN, box, mask, keypoint and classifier blobs belong to heads
    heads = sorted(old for new, old in renamed.items() if not C2_BACKBONE.match(new))
    renamed = {new: old for new, old in renamed.items() if C2_BACKBONE.match(new)}
    log.info(
        "%s: renamed %d Caffe2 backbone weights to detectron2 names; ignoring %d head "
        "blobs (%s, ...)",
        path,
        len(renamed),
        len(heads),
        heads[0] if heads else "-",
    )
    return {new: _to_tensor(old, model[old], path) for new, old in renamed.items()}, heads


def _nest_suffix_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """detectron2's name-matching heuristics match by suffix, so such checkpoints may
    omit the nesting (`stem.`, `res2.`, `fpn_lateral2.` at the top): put it back."""
    state = {
        (f"backbone.bottom_up.{k}" if re.match(r"(stem|res\d)\.", k) else k): v
        for k, v in state.items()
    }
    return {
        (f"backbone.{k}" if re.match(r"fpn_(lateral|output)\d", k) else k): v
        for k, v in state.items()
    }


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], str, int]:
    """A detectron2 model's state dict, named as detectron2 names it (`backbone.` kept),
    the format it came in ("pth", "detectron2-pkl" or "caffe2-pkl", renamed here), and
    how many Caffe2 head blobs were dropped."""
    path = Path(path)
    if not path.is_file():
        raise GapscopeError(f"checkpoint {path} does not exist")
    model, fmt, heuristics = _read_model(path)
    if not isinstance(model, dict) or not model:
        raise GapscopeError(f"checkpoint {path} holds no state dict of weights")
    if not all(isinstance(k, str) for k in model):
        raise GapscopeError(f"checkpoint {path}: its state dict has non-string keys")
    heads: list[str] = []
    if fmt == "caffe2-pkl":
        state, heads = _rename_caffe2(model, path)
        heuristics = True
    else:
        state = {k: _to_tensor(k, v, path) for k, v in model.items()}
    if all(k.startswith("module.") for k in state):  # fvcore strips DataParallel's prefix
        state = {k[len("module.") :]: v for k, v in state.items()}
    if heuristics:
        state = _nest_suffix_names(state)
    return state, fmt, len(heads)


# ----------------------------------------------------------------------------- loading


def _check_pixel_stats(state: dict, arch: Arch, path: Path) -> None:
    """Older detectron2 stored MODEL.PIXEL_MEAN/STD in the checkpoint. They must agree
    with the config: a mismatch means the config is not the one the model was trained with."""
    for key, want, cfg_key in (
        ("pixel_mean", arch.pixel_mean, "MODEL.PIXEL_MEAN"),
        ("pixel_std", arch.pixel_std, "MODEL.PIXEL_STD"),
    ):
        if key not in state:
            continue
        got = state.pop(key).detach().double().flatten()
        expected = torch.tensor(want, dtype=torch.float64)
        if got.numel() != 3 or not torch.allclose(got, expected, rtol=1e-4, atol=1e-3):
            shown = [round(v, 3) for v in got.tolist()]
            raise GapscopeError(
                f"checkpoint {path} stores {key} {shown} but {arch.source} sets "
                f"{cfg_key} = {list(want)}: use the config the model was trained with"
            )


def _fill_caffe2_statistics(module: Detectron2FPN, state: dict, path: Path) -> None:
    """Caffe2 folded BN into an affine; detectron2 leaves the statistics it lacks at their
    identity initialisation, so they are taken from the freshly built module."""
    own = module.state_dict()
    filled = [k for k in own if k.endswith(("running_mean", "running_var")) and k not in state]
    for k in filled:
        state[k] = own[k].clone()
    if filled:
        log.info("%s: %d BN statistics absent (Caffe2 affine), left at identity", path, len(filled))


def _mismatch_hint(state: dict, arch: Arch) -> str:
    """Why a checkpoint that does not fit probably does not: another depth, or RetinaNet."""
    if any(k.startswith("top_block.") for k in state):
        return (
            " (the checkpoint has top_block.p6/p7 weights: a RetinaNet backbone, "
            "build_retinanet_resnet_fpn_backbone with LastLevelP6P7, which is not converted)"
        )
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"bottom_up\.res4\.(\d+)\.", k))}
    n = max(blocks) + 1 if blocks else 0
    depth = {6: 50, 23: 101, 36: 152}.get(n)
    if depth and depth != arch.depth:
        return (
            f" (the checkpoint has {n} res4 blocks, a ResNet-{depth}, but the config sets "
            f"MODEL.RESNETS.DEPTH = {arch.depth})"
        )
    return ""


def load_detectron2_weights(module: Detectron2FPN, arch: Arch, path: Path) -> dict:
    """Load a checkpoint into `module` strictly; its format and head-key count, for info."""
    state, fmt, c2_heads = read_checkpoint(path)
    _check_pixel_stats(state, arch, path)
    if any(k.startswith("backbone.") for k in state):
        state = {
            (k[len("backbone.") :] if k.startswith("backbone.") else k): v for k, v in state.items()
        }
    if fmt == "caffe2-pkl":
        _fill_caffe2_statistics(module, state, path)
    try:
        load_into(module, state, str(path), ignore_prefixes=arch.heads)
    except GapscopeError as exc:
        raise GapscopeError(f"{exc}{_mismatch_hint(state, arch)}") from None
    n_heads = c2_heads + sum(1 for k in state if k.startswith(arch.heads))
    return {"checkpoint_format": fmt, "head_keys_ignored": n_heads}
