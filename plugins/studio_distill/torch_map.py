"""Recipe -> torch student, and trained student -> ONNX with the recipe's layer names.

Recipe layer names are ONNX node names of the model exported from the torch source; the torch
module behind ``/conv2/conv2.0/Conv`` is found from the scopes in the name (``conv2.0``).

Student construction mirrors the ONNX techniques so that the result is the same architecture the
ONNX pipeline would produce, only trained:

* BatchNorm that directly follows a Conv is folded into it first (as the ONNX export does), so
  weights, channel importance and fake quantization all see the deployed (folded) weights.
* ``decompose: svd`` -> ``Linear`` becomes ``Sequential(svd_a, svd_b)`` (SVD init, same rank rule);
  ``decompose: tucker`` -> ``Conv2d`` becomes ``Sequential(tucker_in, tucker_core, tucker_out)``.
* ``prune: channels`` -> Torch-Pruning's DependencyGraph removes the ``ceil((1-ratio) C)`` output
  channels with the smallest L1 norm (as ``studio_pruning``) and every coupled input; a
  factorised layer has each of its parts pruned, like the pipeline maps ``X`` to ``X/<suffix>``.
* ``quantize`` steps become fake quantization (QAT, see ``lowbit``) during training only.

After export, the nodes of a factorised layer ``X`` are renamed ``X/svd_a`` ... (the pipeline's
naming convention) and a layer that kept its module keeps its original node name.
"""

from __future__ import annotations

import collections
import copy
import io
import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from torch import nn

from studio.core.errors import TechniqueError
from studio.core.recipe import LayerPlan, Recipe

WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass
class StudentBuild:
    """A student model plus how its modules relate to the recipe's layer names."""

    student: nn.Module
    layer_module: dict[str, str]  # recipe layer name -> module path (same in teacher and student)
    factorised: dict[str, list[str]] = field(default_factory=dict)  # layer -> child names
    kept: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> kept output channels
    folded: dict[str, str] = field(default_factory=dict)  # conv path -> the BN path folded into it
    plans: dict[str, LayerPlan] = field(default_factory=dict)  # effective plan per layer
    notes: list[str] = field(default_factory=list)

    def leaf_paths(self, layer: str) -> list[str]:
        """Weighted modules standing for a recipe layer (its parts when factorised)."""
        path = self.layer_module[layer]
        if layer in self.factorised:
            return [f"{path}.{c}" for c in self.factorised[layer]]
        return [path]


# ---------------------------------------------------------------------- names


def module_path_for(node_name: str, modules: dict[str, nn.Module]) -> str | None:
    """Module path behind an ONNX node name from the legacy exporter's scopes.

    ``/conv2/conv2.0/Conv`` -> ``conv2.0``; ``/fc1/Gemm`` -> ``fc1``; ``/fc1/svd_a/MatMul`` ->
    ``fc1.svd_a`` (scopes are either full dotted paths or child names).
    """
    segs = [s for s in node_name.split("/") if s][:-1]
    cur = ""
    for seg in segs:
        cand = f"{cur}.{seg}" if cur else seg
        if cand in modules:
            cur = cand
        elif seg in modules and (not cur or seg.startswith(cur + ".")):
            cur = seg
        else:
            return None
    return cur or None


def map_layers(proto: onnx.ModelProto, model: nn.Module, layer_names: list[str]) -> dict[str, str]:
    """Recipe layer (ONNX node) name -> weighted torch module path, for the layers that map."""
    modules = dict(model.named_modules())
    out = {}
    for name in layer_names:
        path = module_path_for(name, modules)
        if path is not None and isinstance(modules[path], WEIGHTED):
            out[name] = path
    return out


def _set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


# ---------------------------------------------------------------------- BN folding


def fold_batchnorms(model: nn.Module) -> list[tuple[str, str]]:
    """Fold every BatchNorm fed only by a Conv into that Conv (BN -> Identity); returns the
    (conv, bn) module paths.

    Uses torch.fx to find Conv -> BN pairs; a model fx cannot trace keeps its BNs.
    """
    try:
        import torch.fx

        gm = torch.fx.symbolic_trace(model)
    except Exception:
        return []
    modules = dict(model.named_modules())
    folded = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(
            modules.get(node.target), nn.BatchNorm2d | nn.BatchNorm1d
        ):
            continue
        prev = node.args[0] if node.args else None
        if getattr(prev, "op", None) != "call_module" or len(prev.users) != 1:
            continue
        conv = modules.get(prev.target)
        if not isinstance(conv, nn.Conv2d | nn.Conv1d):
            continue
        bn = modules[node.target]
        with torch.no_grad():
            fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv.eval(), bn.eval())
        _set_module(model, prev.target, fused)
        _set_module(model, node.target, nn.Identity())
        folded.append((prev.target, node.target))
    return folded


# ---------------------------------------------------------------------- decomposition


def svd_linear(lin: nn.Linear, params) -> nn.Sequential:
    """Linear (out x in) -> Sequential(svd_a: in->r, svd_b: r->out), truncated-SVD initialised."""
    from studio_decomposition.lowrank import break_even_rank, rank_from_energy, rank_from_ratio, svd_factors

    w = lin.weight.detach().double().numpy().T  # K x N, the input side first (as in ONNX)
    k, n = w.shape
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    if params.rank_ratio is not None:
        r = rank_from_ratio(params.rank_ratio, min(k, n), params.min_rank)
    else:
        r = rank_from_energy(s, params.energy, params.min_rank)
    if r >= break_even_rank(k, n):
        raise TechniqueError(f"svd rank {r} would not reduce cost of a {k}x{n} weight; lower rank_ratio")
    a, b = svd_factors(w, r, spectrum=(u, s, vt))
    first = nn.Linear(k, r, bias=False)
    second = nn.Linear(r, n, bias=lin.bias is not None)
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy(a.T.copy()).float())
        second.weight.copy_(torch.from_numpy(b.T.copy()).float())
        if lin.bias is not None:
            second.bias.copy_(lin.bias)
    return nn.Sequential(collections.OrderedDict(svd_a=first, svd_b=second))


def tucker_conv(conv: nn.Conv2d, params, seed: int = 0) -> nn.Sequential:
    """Conv2d -> Sequential(tucker_in 1x1, tucker_core kxk, tucker_out 1x1), Tucker-2 initialised."""
    from studio_decomposition.lowrank import rank_from_ratio, tucker2

    if conv.groups != 1:
        raise TechniqueError("tucker: grouped convolutions are not decomposed")
    cout, cin = conv.out_channels, conv.in_channels
    if params.ranks is not None:
        r1, r2 = min(params.ranks[0], cin), min(params.ranks[1], cout)
    else:
        r1, r2 = rank_from_ratio(params.rank_ratio, cin), rank_from_ratio(params.rank_ratio, cout)
    first, core, last = tucker2(conv.weight.detach().double().numpy(), r1, r2, seed=seed)
    a = nn.Conv2d(cin, r1, 1, bias=False)
    c = nn.Conv2d(
        r1,
        r2,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        bias=False,
        padding_mode=conv.padding_mode,
    )
    z = nn.Conv2d(r2, cout, 1, bias=conv.bias is not None)
    with torch.no_grad():
        a.weight.copy_(torch.from_numpy(first).float())
        c.weight.copy_(torch.from_numpy(core).float())
        z.weight.copy_(torch.from_numpy(last).float())
        if conv.bias is not None:
            z.bias.copy_(conv.bias)
    return nn.Sequential(collections.OrderedDict(tucker_in=a, tucker_core=c, tucker_out=z))


# ---------------------------------------------------------------------- pruning


def _prune_out(dg, model: nn.Module, path: str, ratio: float, round_to: int, importance: str) -> torch.Tensor:
    """Remove the least important output channels of one module; returns the kept indices."""
    import torch_pruning as tp
    from studio_pruning.techniques import kept_channels

    mod = model.get_submodule(path)
    w = mod.weight.detach()
    c = w.shape[0]
    k = kept_channels(c, ratio, round_to)
    rows = w.reshape(c, -1).double()
    imp = rows.abs().sum(1) if importance == "l1" else rows.pow(2).sum(1).sqrt()
    keep = torch.sort(torch.argsort(-imp, stable=True)[:k]).values
    if k >= c:
        return keep
    drop = sorted(set(range(c)) - set(keep.tolist()))
    fn = tp.prune_linear_out_channels if isinstance(mod, nn.Linear) else tp.prune_conv_out_channels
    group = dg.get_pruning_group(mod, fn, idxs=drop)
    if not dg.check_pruning_group(group):
        raise TechniqueError(f"{path}: Torch-Pruning refuses to prune {len(drop)} of its {c} channels")
    group.prune()
    return keep


# ---------------------------------------------------------------------- build


def effective_plans(recipe: Recipe, layer_names: list[str]) -> dict[str, LayerPlan]:
    return recipe.resolve(layer_names, strict=False)


def build_student(
    teacher: nn.Module,
    recipe: Recipe,
    original: onnx.ModelProto,
    example: tuple[torch.Tensor, ...],
    *,
    seed: int = 0,
) -> StudentBuild:
    """Copy the teacher and apply the recipe's decompose + prune stages in torch."""
    from studio.core.graph import analyze

    names = [la.name for la in analyze(original, with_stats=False).layers]
    plans = effective_plans(recipe, names)
    student = copy.deepcopy(teacher).eval()
    scripted = isinstance(student, torch.jit.ScriptModule)
    structural = {n: p for n, p in plans.items() if p.decompose is not None or p.prune is not None}
    if scripted and structural:
        raise TechniqueError(
            "distillation with pruning / low-rank needs the model's Python code: open it as a "
            "state_dict + --factory, not a TorchScript file"
        )
    notes = []
    if not scripted:
        folded = fold_batchnorms(student)
        build_folded = dict(folded)
        if folded:
            notes.append(f"folded BatchNorm into {len(folded)} conv(s) before training")
    layer_module = map_layers(original, student, names)
    missing = [n for n in structural if n not in layer_module]
    if missing:
        raise TechniqueError(
            f"cannot find the torch module of layer(s) {missing[:3]} (node names do not match module scopes)"
        )
    build = StudentBuild(student, layer_module, plans=plans, notes=notes)
    if not scripted:
        build.folded = build_folded
    from studio.plugin_api.registry import default_registry

    reg = default_registry()

    def parsed(step):
        tech = reg.get(step.technique)
        return tech.parse_params(step.params) if hasattr(tech, "parse_params") else tech.Params(**step.params)

    order = list(layer_module)  # graph order
    for name in order:
        plan = plans.get(name)
        if plan is None or plan.decompose is None:
            continue
        path = layer_module[name]
        mod = student.get_submodule(path)
        p = parsed(plan.decompose)
        if plan.decompose.technique == "svd" and isinstance(mod, nn.Linear):
            new = svd_linear(mod, p)
        elif plan.decompose.technique == "tucker" and isinstance(mod, nn.Conv2d):
            new = tucker_conv(mod, p, seed)
        else:
            notes.append(f"{name}: {plan.decompose.technique} has no torch counterpart here; left whole")
            continue
        _set_module(student, path, new)
        build.factorised[name] = list(new._modules)
    pruned = [n for n in order if plans.get(n) is not None and plans[n].prune is not None]
    if pruned:
        import torch_pruning as tp

        dg = tp.DependencyGraph().build_dependency(student, example_inputs=example)
        for name in pruned:
            step = plans[name].prune
            if step.technique != "channels":
                notes.append(f"{name}: {step.technique} pruning is re-applied by the pipeline, not trained")
                continue
            p = parsed(step)
            for path in build.leaf_paths(name):
                build.kept[name] = _prune_out(dg, student, path, p.ratio, p.round_to, p.importance)
    return build


# ---------------------------------------------------------------------- export


def export_student(
    build: StudentBuild, example: tuple[torch.Tensor, ...], input_names: list[str], output_names: list[str]
) -> onnx.ModelProto:
    """Legacy (TorchScript) export at opset 17 with a dynamic batch axis, then rename nodes."""
    model = build.student.eval()
    buf = io.BytesIO()
    axes = {n: {0: "batch"} for n in [*input_names, *output_names]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            example,
            buf,
            dynamo=False,
            opset_version=17,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buf.getvalue())
    rename_nodes(proto, build)
    return proto


def rename_nodes(proto: onnx.ModelProto, build: StudentBuild) -> None:
    """Give the weighted nodes of each recipe layer the recipe's names (``X``, ``X/svd_a``, ...)."""
    modules = dict(build.student.named_modules())
    by_path: dict[str, str] = {}
    for layer, path in build.layer_module.items():
        if layer in build.factorised:
            for c in build.factorised[layer]:
                by_path[f"{path}.{c}"] = f"{layer}/{c}"
        else:
            by_path[path] = layer
    taken = {n.name for n in proto.graph.node}
    used: set[str] = set()
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul", "ConvTranspose"):
            continue
        path = module_path_for(node.name, modules)
        target = by_path.get(path or "")
        if target and target != node.name and target not in used and target not in taken:
            node.name = target
        used.add(node.name)


def example_inputs(calibration: dict[str, np.ndarray], input_names: list[str]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(calibration[n][:2])) for n in input_names)
