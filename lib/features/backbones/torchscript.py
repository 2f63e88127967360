"""TorchScript models: load a file, and read any submodule's output from its graph.

A loaded ScriptModule refuses forward hooks, so `ScriptLayerFn` gets layer outputs from the
graph instead: it freezes a copy of the module (parameters become constants, calls are
inlined; the module path of every operation survives), finds for each layer the last value
its operations hand to the rest of the graph — the module's output, and for a module that
runs several times (ResNet's shared ``relu``) its last call, as a hook would keep — makes
clones of those values (so later in-place operations do not change them) the graph's only
outputs, and lets dead-code elimination drop the rest, so a shallow layer does not pay for
the deep ones. The compiled function maps x → [activations]: `lib.analysis.caricature.LayerFn`'s
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

from lib.features.backbones.base import Backbone, file_sha256
from lib.features.backbones.registry import register_backbone
from lib.runtime.errors import GapscopeError, first_line

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
        raise GapscopeError(
            f"{path} is not a TorchScript file saved with torch.jit.save ({first_line(exc)}); "
            "for a state dict write NAME=ARCH:CHECKPOINT"
        ) from None
    if not isinstance(module, torch.jit.ScriptModule):
        raise GapscopeError(f"{path} holds a TorchScript function, not a module with layers")
    return module.eval()


@register_backbone(
    "torchscript",
    "a TorchScript file (torchscript:model.pt): every module is a layer; caricatures only",
    own_normalisation=False,
)
def torchscript_backbone(checkpoint=None, random_weights: bool = False) -> Backbone:
    """A TorchScript archive as a model without feature levels: its layers are read from
    the graph (ScriptLayerFn) by caricatures and listed by `batch layers`."""
    if checkpoint is None:
        raise GapscopeError("torchscript needs a file: torchscript:model.pt")
    if random_weights:
        raise GapscopeError("a TorchScript file is its own weights: drop --random-weights")
    return Backbone(
        name="torchscript",
        module=load_torchscript(checkpoint),
        levels=(),
        weights=f"{checkpoint} (sha256 {file_sha256(checkpoint)[:12]})",
        info={"architecture": "TorchScript"},
    )


def module_path(node: torch._C.Node) -> str:
    """The dotted submodule name an inlined graph node came from ('' for the root)."""
    entries = _ENTRY.findall(node.getModuleHierarchy())
    return ".".join(name for name, _ in entries if name not in _NOT_MODULES)


def _output_of(nodes: list, layer: str) -> torch._C.Value:
    """The value `layer`'s last call hands to the rest of the graph.

    An inlined call is a contiguous run of nodes inside the layer's path; what it returns
    is what those nodes make and others use. Constants are pooled across the graph, so
    they neither count nor break a run. A call inside an if or a loop that the layer does
    not own lives in a nested block: when it is the last call, a hook would keep a value
    the graph cannot hand out, so that is an error rather than an earlier call's value.
    """

    def inside(node) -> bool:
        path = module_path(node)
        return path == layer or path.startswith(layer + ".")

    calls: list[list | torch._C.Node] = []
    previous_inside = False
    for node in nodes:
        if node.kind() == "prim::Constant":
            continue
        now_inside = inside(node)
        if not now_inside and _runs_in_blocks(node, inside):
            calls.append(node)  # the if/loop node that holds this call
        elif now_inside and not previous_inside:
            calls.append([])
        if now_inside:
            calls[-1].extend(
                value
                for value in node.outputs()
                if any(not inside(use.user) for use in value.uses())
            )
        previous_inside = now_inside
    if calls and isinstance(calls[-1], torch._C.Node):
        holder = module_path(calls[-1])
        instead = f", such as {holder!r}, which holds it" if holder else ""
        raise GapscopeError(
            f"layer {layer!r} runs inside an if or a loop of the TorchScript model's forward, "
            f"where its output cannot be read: choose a layer outside that control flow{instead}"
        )
    if not calls or not calls[-1]:
        raise GapscopeError(
            f"layer {layer!r} never runs in the TorchScript model's forward: choose another layer"
        )
    returned = calls[-1]
    if len(returned) != 1 or not returned[0].type().isSubtypeOf(torch._C.TensorType.get()):
        kinds = ", ".join(str(value.type()) for value in returned)
        raise GapscopeError(
            f"layer {layer!r} outputs {kinds} rather than one tensor: choose a layer that "
            "outputs a feature map"
        )
    return returned[0]


def _runs_in_blocks(node: torch._C.Node, inside) -> bool:
    """Whether any node nested in `node`'s blocks (an if's branches, a loop's body) is inside."""
    return any(
        (inner.kind() != "prim::Constant" and inside(inner)) or _runs_in_blocks(inner, inside)
        for block in node.blocks()
        for inner in block.nodes()
    )


def _state_name(graph: torch._C.Graph) -> str:
    """The dotted attribute (``norm.mean``) that the first remaining use of ``self`` reaches.

    Freezing folds every attribute into a constant except those forward changes (a counter,
    a buffer updated in place), so any use of ``self`` left is such state.
    """
    names, uses = [], list(graph.inputs())[0].uses()
    while uses and uses[0].user.kind() in ("prim::GetAttr", "prim::SetAttr"):
        node = uses[0].user
        names.append(node.s("name"))
        uses = node.output().uses() if node.kind() == "prim::GetAttr" else []
    return repr(".".join(names)) if names else "an attribute"


class ScriptLayerFn:
    """``x → [activation of each layer]`` for a ScriptModule (see the module docstring).

    `layers` are dotted module names, already resolved (`lib.analysis.caricature.resolve_layer`).
    Build it after moving the module to its device: the frozen copy keeps the weights
    where they were.
    """

    def __init__(self, model: torch.jit.ScriptModule, layers: Sequence[str]):
        self.layers = list(layers)
        was_training = model.training
        model.eval()  # freezing bakes the mode in
        try:
            frozen = torch._C._freeze_module(model._c)
        except RuntimeError as exc:  # e.g. a submodule picked from a ModuleList at run time
            reason = first_line(exc)
            raise GapscopeError(
                f"cannot freeze the TorchScript model to read its layers ({reason}): save it "
                "with torch.jit.trace, or script a forward that calls fixed submodules"
            ) from None
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
        if list(graph.inputs())[0].uses():  # state forward changes: values depend on past calls
            raise GapscopeError(
                f"the TorchScript model's forward changes its own state ({_state_name(graph)}:"
                " a counter, running statistics, a cache), so its layers depend on earlier calls:"
                " save a version whose forward does not update it"
            )
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
