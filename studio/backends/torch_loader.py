"""PyTorch files -> ONNX.

Supported inputs, safest first:

* a TorchScript archive (``torch.jit.save``) -- loaded with ``torch.jit.load``;
* a ``state_dict`` (``torch.save(model.state_dict())``, also ``{"state_dict": ...}`` checkpoints),
  loaded with ``torch.load(weights_only=True)`` and poured into the module returned by a factory
  given as ``"package.module:function"`` (or ``"path/to/file.py:function"``);
* a fully pickled ``nn.Module`` -- only with ``trust_pickle=True`` (``--trust-pickle``), because
  unpickling runs arbitrary code from the file.

Exports use the TorchScript-based exporter (``dynamo=False``, opset 17, dynamic batch axis, input
``input``, output ``output`` / ``output_<i>``) and fall back to the dynamo exporter if that fails.
Results are cached by content hash, so opening the same file twice exports once.

torch is imported only inside functions: importing this module is cheap and torch-free.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import re
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from studio.core.errors import ModelLoadError, UnsupportedModelError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "input"
_CACHE_FORMAT = "v1"  # bump when the export settings change, to invalidate old cache entries

TorchFileKind = Literal["torchscript", "state_dict", "pickled", "unknown"]

_PICKLE_DANGER = (
    "unpickling runs arbitrary Python code stored in the file, so only do this for files you "
    "created yourself or fully trust; safer alternatives are a TorchScript file (torch.jit.save) "
    "or a state_dict plus --factory"
)


def default_cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("pareto-studio")) / "torch_exports"


# --------------------------------------------------------------------------------------------
# public API


def export_torch_to_onnx(
    path: Path,
    *,
    factory: str | None = None,
    trust_pickle: bool = False,
    input_shape: tuple[int, ...] | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """Export a PyTorch file to ONNX and return the path of the (cached) ``.onnx`` file.

    Raises ``ModelLoadError`` when the file cannot be loaded as asked (pickled module without
    ``trust_pickle``, bad factory, wrong state_dict keys, unknown input shape) and
    ``UnsupportedModelError`` when both exporters fail.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"PyTorch file not found: {path}")
    shape = _normalize_shape(input_shape) if input_shape is not None else None
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = _cache_key(path, factory, shape)
    target = cache / f"{_safe_stem(path)}-{key[:20]}.onnx"
    if target.is_file():
        log.debug("torch export cache hit: %s", target)
        return target

    model = load_torch_module(path, factory=factory, trust_pickle=trust_pickle)
    shape = shape or _infer_input_shape(model, factory)
    cache.mkdir(parents=True, exist_ok=True)
    _export(model, shape, target, source=path)
    return target


def load_torch_module(path: Path, factory: str | None = None, trust_pickle: bool = False) -> nn.Module:
    """Load a TorchScript file, a state_dict + factory, or (trusted) pickled module; returns it in eval mode."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"PyTorch file not found: {path}")
    kind = detect_torch_file_kind(path)
    if kind == "torchscript":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # "torch.jit is deprecated"
                model = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ModelLoadError(
                f"{path.name}: could not load the TorchScript archive: {_one_line(exc)}"
            ) from exc
        return model.eval()

    if kind == "unknown":
        raise ModelLoadError(
            f"{path.name} is not a PyTorch file (expected a torch.save checkpoint or a TorchScript archive)"
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        if not _is_weights_only_refusal(exc):
            raise ModelLoadError(
                f"{path.name} is not a readable PyTorch file ({type(exc).__name__}: {_one_line(exc)})"
            ) from exc
        if not trust_pickle:
            what = _refused_global(exc)
            raise ModelLoadError(
                f"{path.name} contains pickled Python objects{f' ({what})' if what else ''}, "
                "e.g. a whole nn.Module saved with torch.save(model); it can only be opened with "
                f"--trust-pickle: {_PICKLE_DANGER}"
            ) from exc
        obj = _load_trusted_pickle(path)

    if _is_module(obj):
        return obj.eval()
    state_dict = _extract_state_dict(obj)
    if state_dict is None:
        raise ModelLoadError(
            f"{path.name} holds a {type(obj).__name__}, not a model or a state_dict "
            "(expected a TorchScript archive, a state_dict of tensors, or a pickled nn.Module)"
        )
    if not factory:
        raise ModelLoadError(
            f"{path.name} holds only weights (a state_dict with {len(state_dict)} tensors); "
            "give the code that builds the model with --factory package.module:function"
        )
    model = _call_factory(factory)
    _load_state_dict(model, state_dict, path, factory)
    return model.eval()


def detect_torch_file_kind(path: Path) -> TorchFileKind:
    """Cheap, torch-free guess of what a .pt/.pth file holds (reads only the zip directory / header)."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
            if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
                return "torchscript"
            data_pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if data_pkl is None:
                return "unknown"
            with zipfile.ZipFile(path) as zf:
                payload = zf.read(data_pkl)
            return "pickled" if _pickle_has_foreign_globals(payload) else "state_dict"
        with open(path, "rb") as fh:
            head = fh.read(2)
        # legacy (non-zip) torch.save format starts with a pickle protocol marker
        return "state_dict" if head[:1] == b"\x80" else "unknown"
    except OSError:
        return "unknown"


# --------------------------------------------------------------------------------------------
# loading helpers

_SAFE_GLOBAL_PREFIXES = ("torch", "collections", "builtins", "_codecs", "numpy")


def _pickle_has_foreign_globals(payload: bytes) -> bool:
    """True if the pickle references classes outside torch / the standard containers."""
    import pickletools

    recent: list[str] = []
    try:
        for op, arg, _pos in pickletools.genops(payload):
            module = None
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                module = arg.split(" ", 1)[0]
            elif op.name == "STACK_GLOBAL" and len(recent) >= 2:
                module = recent[-2]
            elif isinstance(arg, str) and op.name.endswith("UNICODE"):
                recent = [*recent[-1:], arg]
            if module is not None and not module.startswith(_SAFE_GLOBAL_PREFIXES):
                return True
    except Exception:
        return False
    return False


def _is_weights_only_refusal(exc: BaseException) -> bool:
    import pickle

    msg = str(exc)
    return isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in msg


def _refused_global(exc: BaseException) -> str | None:
    m = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return m.group(1) if m else None


def _load_trusted_pickle(path: Path) -> Any:
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise ModelLoadError(
            f"{path.name} is a pickled model whose class cannot be imported ({_one_line(exc)}); "
            "install / put on PYTHONPATH the code that defined it, or save a state_dict and use --factory"
        ) from exc
    except Exception as exc:
        raise ModelLoadError(
            f"{path.name}: unpickling failed: {type(exc).__name__}: {_one_line(exc)}"
        ) from exc


def _is_module(obj: Any) -> bool:
    import torch

    return isinstance(obj, torch.nn.Module | torch.jit.ScriptModule)


def _extract_state_dict(obj: Any) -> dict[str, Any] | None:
    import torch

    if not isinstance(obj, dict):
        return None
    for wrapper in ("state_dict", "model_state_dict", "model", "net", "weights"):
        inner = obj.get(wrapper)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
            break
    if not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return None
    # DataParallel / DDP checkpoints prefix every key with "module."
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def resolve_factory(factory: str):
    """Import ``"package.module:function"`` (or ``"file.py:function"``, or ``"package.module.function"``)."""
    spec = factory.strip()
    if ":" in spec and not re.match(r"^[A-Za-z]:[\\/]", spec):
        mod_name, _, attr = spec.rpartition(":")
    elif "." in spec:
        mod_name, _, attr = spec.rpartition(".")
    else:
        raise ModelLoadError(f"factory {factory!r} must look like package.module:function")
    try:
        if mod_name.endswith(".py"):
            file = Path(mod_name).expanduser().resolve()
            if not file.is_file():
                raise FileNotFoundError(str(file))
            mod_id = f"_studio_factory_{hashlib.sha1(str(file).encode()).hexdigest()[:10]}"
            module_spec = importlib.util.spec_from_file_location(mod_id, file)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[mod_id] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot import the module of factory {factory!r}: {type(exc).__name__}: {_one_line(exc)}"
        ) from exc
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise ModelLoadError(f"factory {factory!r}: module {mod_name!r} has no callable {attr!r}")
    return module, fn


def _call_factory(factory: str) -> nn.Module:
    import torch

    _module, fn = resolve_factory(factory)
    try:
        model = fn()
    except Exception as exc:
        raise ModelLoadError(f"factory {factory!r} raised {type(exc).__name__}: {_one_line(exc)}") from exc
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(f"factory {factory!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _load_state_dict(model: nn.Module, state_dict: dict[str, Any], path: Path, factory: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise ModelLoadError(
            f"the weights in {path.name} do not fit the model built by {factory!r}: keys " + "; ".join(parts)
        )
    bad = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise ModelLoadError(
            f"the weights in {path.name} do not fit the model built by {factory!r}: shape mismatch "
            f"({len(bad)}: {', '.join(bad[:3])})"
        )
    try:
        model.load_state_dict(state_dict, strict=True)
    except Exception as exc:
        raise ModelLoadError(f"loading {path.name} into {factory!r} failed: {_one_line(exc)}") from exc


def _infer_input_shape(model: Any, factory: str | None) -> tuple[int, ...]:
    shape = getattr(model, "example_input_shape", None)
    if shape is None and factory:
        module, _ = resolve_factory(factory)
        shape = getattr(module, "EXAMPLE_INPUT_SHAPE", None)
    if shape is None:
        mod = sys.modules.get(type(model).__module__)
        shape = getattr(mod, "EXAMPLE_INPUT_SHAPE", None) if mod is not None else None
    if shape is None:
        raise ModelLoadError(
            "cannot tell the model's input shape; give it with --input-shape, e.g. --input-shape 1,3,224,224"
        )
    return _normalize_shape(shape)


def _normalize_shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, str):
        shape = [s for s in re.split(r"[,x\s]+", shape.strip("()[] ")) if s]
    try:
        out = tuple(int(s) for s in shape)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"invalid input shape {shape!r}: expected integers like 1,3,224,224") from exc
    if not out or any(d <= 0 for d in out):
        raise ModelLoadError(f"invalid input shape {shape!r}: all dimensions must be positive")
    return out


# --------------------------------------------------------------------------------------------
# export


def _export(model: Any, shape: tuple[int, ...], target: Path, *, source: Path) -> None:
    import torch

    example = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            out = model(example)
    except Exception as exc:
        raise ModelLoadError(
            f"running the model on an input of shape {shape} failed ({type(exc).__name__}: "
            f"{_one_line(exc)}); give the right shape with --input-shape"
        ) from exc
    n_out = len(out) if isinstance(out, tuple | list) else 1
    output_names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    dynamic_axes = {INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in output_names}}

    fd, tmp_name = tempfile.mkstemp(prefix=target.stem + ".", suffix=".onnx.tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # legacy-exporter deprecation, tracer warnings
                torch.onnx.export(
                    model,
                    (example,),
                    str(tmp),
                    dynamo=False,
                    opset_version=OPSET,
                    input_names=[INPUT_NAME],
                    output_names=output_names,
                    dynamic_axes=dynamic_axes,
                    do_constant_folding=True,
                )
        except Exception as legacy_exc:
            log.info("legacy ONNX export failed (%s); trying the dynamo exporter", legacy_exc)
            try:
                _export_dynamo(model, example, tmp, output_names)
            except Exception as dynamo_exc:
                raise UnsupportedModelError(
                    f"could not export {source.name} to ONNX: TorchScript exporter: "
                    f"{_one_line(legacy_exc)}; dynamo exporter: {_one_line(dynamo_exc)}"
                ) from dynamo_exc
        _check_and_stamp(tmp, source)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _export_dynamo(model: Any, example: Any, tmp: Path, output_names: list[str]) -> None:
    import torch

    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=output_names,
            dynamic_shapes=({0: batch},),
            optimize=True,
        )
    program.save(str(tmp))


def _check_and_stamp(tmp: Path, source: Path) -> None:
    import onnx

    m = onnx.load(str(tmp))
    onnx.checker.check_model(m)
    m.doc_string = f"Exported by Pareto Studio from {source.name}"
    onnx.save(m, str(tmp))


# --------------------------------------------------------------------------------------------
# misc


def _cache_key(path: Path, factory: str | None, shape: tuple[int, ...] | None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    h.update(b"\0factory=" + (factory or "").encode())
    h.update(b"\0shape=" + (",".join(map(str, shape)) if shape else "").encode())
    h.update(b"\0" + f"{_CACHE_FORMAT}/opset{OPSET}/torch{_torch_version()}".encode())
    return h.hexdigest()


def _torch_version() -> str:
    try:
        from importlib.metadata import version

        return version("torch")
    except Exception:
        return "?"


def _safe_stem(path: Path) -> str:
    return re.sub(r"[^\w.-]+", "_", path.stem)[:60] or "model"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."
