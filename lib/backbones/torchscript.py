"""TorchScript models: load a file, and read any submodule's output from its graph.

A loaded ScriptModule refuses forward hooks, so `ScriptLayerFn` gets layer outputs from the
graph instead: it freezes a copy of the module (parameters become constants, calls are
inlined; the module path of every operation survives), finds for each layer the last value
its operations hand to the rest of the graph — the module's output, and for a module that
runs several times (ResNet's shared ``relu``) its last call, as a hook would keep — makes
clones of those values (so later in-place operations do not change them) the graph's only
outputs, and lets dead-code elimination drop the rest, so a shallow layer does not pay for
the deep ones. The compiled function maps x → [activations]: `lib.caricature.LayerFn`'s
contract, with exactly the eager module's values.

`torch.jit` is deprecated upstream (PyTorch points to `torch.export`); this reads the files
users already have.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from lib.errors import GapscopeError

# One entry of Node.getModuleHierarchy(): "name(Type)". SELF marks a method of the
# current module, UNKNOWN_INSTANCE a free function: neither names a submodule.
_ENTRY = re.compile(r"(\w+)\(([^()]*)\)")
_NOT_MODULES = {"SELF", "UNKNOWN_INSTANCE"}


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    """A TorchScript archive (``torch.jit.save``) on the CPU, in eval mode."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise GapscopeError(f"TorchScript file {path} {what}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "torch.jit.load is deprecated": we know
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError, ValueError, zipfile errors...
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise GapscopeError(
            f"{path} is not a TorchScript file saved with torch.jit.save ({reason}); "
            "for a state dict write NAME=ARCH:CHECKPOINT"
        ) from None
    if not isinstance(module, torch.jit.ScriptModule):
        raise GapscopeError(f"{path} holds a TorchScript function, not a module with layers")
    return module.eval()


def module_path(node: torch._C.Node) -> str:
    """The dotted submodule name an inlined graph node came from ('' for the root)."""
    entries = _ENTRY.findall(node.getModuleHierarchy())
    return ".".join(name for name, _ in entries if name not in _NOT_MODULES)


def _output_of(nodes: list, layer: str) -> torch._C.Value:
    """The value `layer`'s last call hands to the rest of the graph.

    An inlined call is a contiguous run of nodes inside the layer's path; what it returns
    is what those nodes make and others use. Constants are pooled across the graph, so
    they neither count nor break a run.
    """

    def inside(node) -> bool:
        path = module_path(node)
        return path == layer or path.startswith(layer + ".")

    calls: list[list] = []
    previous_inside = False
    for node in nodes:
        if node.kind() == "prim::Constant":
            continue
        now_inside = inside(node)
        if now_inside and not previous_inside:
            calls.append([])
        if now_inside:
            calls[-1].extend(
                value
                for value in node.outputs()
                if any(not inside(use.user) for use in value.uses())
            )
        previous_inside = now_inside
    if not calls or not calls[-1]:
        raise GapscopeError(
            f"layer {layer!r} never runs in the TorchScript model's forward (or only inside "
            "control flow): choose another layer"
        )
    returned = calls[-1]
    if len(returned) != 1 or not returned[0].type().isSubtypeOf(torch._C.TensorType.get()):
        kinds = ", ".join(str(value.type()) for value in returned)
        raise GapscopeError(
            f"layer {layer!r} outputs {kinds} rather than one tensor: choose a layer that "
            "outputs a feature map"
        )
    return returned[0]


class ScriptLayerFn:
    """``x → [activation of each layer]`` for a ScriptModule (see the module docstring).

    `layers` are dotted module names, already resolved (`lib.caricature.resolve_layer`).
    Build it after moving the module to its device: the frozen copy keeps the weights
    where they were.
    """

    def __init__(self, model: torch.jit.ScriptModule, layers: Sequence[str]):
        self.layers = list(layers)
        was_training = model.training
        model.eval()  # freezing bakes the mode in
        try:
            frozen = torch._C._freeze_module(model._c)
        finally:
            model.train(was_training)
        graph = frozen._get_method("forward").graph.copy()
        torch._C._jit_pass_inline(graph)
        nodes = list(graph.nodes())  # top-level only: a value inside an if/loop cannot be read
        taps = [_output_of(nodes, layer) for layer in self.layers]
        while len(list(graph.outputs())):
            graph.eraseOutput(0)
        clones = []
        for value in taps:
            none = graph.insertConstant(None)
            clone = graph.create("aten::clone", [value, none])
            clone.insertAfter(value.node())
            none.node().moveBefore(clone)
            clones.append(clone.output())
        packed = graph.create("prim::TupleConstruct", clones)
        packed.insertBefore(graph.return_node())
        packed.output().setType(torch._C.TupleType([torch._C.TensorType.get()] * len(clones)))
        graph.registerOutput(packed.output())
        torch._C._jit_pass_dce(graph)
        if list(graph.inputs())[0].uses():  # a frozen module reads nothing from self
            raise GapscopeError("the TorchScript model reads module state at run time")
        graph.eraseInput(0)
        self._fn = torch._C._create_function_from_graph("gapscope_layers", graph)

    def __call__(self, x: Tensor) -> list[Tensor]:
        return list(self._fn(x))

    def close(self) -> None:
        pass  # nothing registered on the model

    def __enter__(self) -> ScriptLayerFn:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
