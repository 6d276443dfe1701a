"""The model contract between the exporters and the daemon: names, shapes, metadata, and a checker.

Only ``onnx`` (and optionally ``onnxruntime``) is needed here, never PyTorch, so the checker runs
wherever the daemon's tests run. ``onnx/CONTRACT.md`` is the prose version of this file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

CONTRACT_VERSION = "1"
MIN_OPSET = 17
MAX_IR_VERSION = 13
#: The IR version written by ``export`` (ONNX Runtime 1.31 reads at most 13; opset 17 needs 8).
IR_VERSION = 10
#: The opset written by ``export``.
OPSET = 17

#: The 14 ChestX-ray14 labels, in NIH order: the classifier's output order.
LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
#: Segmenter output channels: the first three are required, the clavicles are optional extras.
SEGMENTER_REQUIRED_CHANNELS = ("left_lung", "right_lung", "heart")
SEGMENTER_CHANNELS = ("left_lung", "right_lung", "heart", "left_clavicle", "right_clavicle")
#: Classifier mask input channels (lungs = max(left_lung, right_lung)).
CLASSIFIER_MASK_CHANNELS = ("lungs", "heart")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Total stride of the classifier backbone: class maps are input_size / 32 on a side.
CLASS_MAP_STRIDE = 32

COMMON_KEYS = (
    "cxr.contract",
    "cxr.role",
    "cxr.model_name",
    "cxr.model_version",
    "cxr.input_size",
    "cxr.trained",
    "cxr.mask_channels",
)
CLASSIFIER_KEYS = (
    "cxr.labels",
    "cxr.thresholds",
    "cxr.normalization_mean",
    "cxr.normalization_std",
    "cxr.mask_size",
)


class ContractError(Exception):
    """A model file does not satisfy the contract; ``problems`` lists every mismatch found."""

    def __init__(self, path: str | Path, problems: list[str]):
        self.path = str(path)
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


@dataclass
class ModelInfo:
    """What the contract tells a user of a conforming model."""

    path: str
    role: str
    input_size: int
    mask_channels: tuple[str, ...]
    trained: bool
    model_name: str
    model_version: str
    metadata: dict[str, str] = field(default_factory=dict)
    # classifier only
    mask_size: int | None = None
    labels: tuple[str, ...] = ()
    thresholds: tuple[float, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


def _floats(text: str, what: str, count: int, problems: list[str]) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        problems.append(f"{what} is not a comma-separated list of numbers: {text!r}")
        return ()
    if len(values) != count:
        problems.append(f"{what} has {len(values)} values, expected {count}")
    if not all(math.isfinite(v) for v in values):
        problems.append(f"{what} has a non-finite value: {text!r}")
    return values


def _positive_int(text: str | None, what: str, problems: list[str]) -> int | None:
    try:
        value = int(text or "")
    except ValueError:
        problems.append(f"{what} is not an integer: {text!r}")
        return None
    if value <= 0:
        problems.append(f"{what} must be positive, got {value}")
        return None
    return value


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    """The shape of a graph input/output: int for fixed, str for named dynamic, None for unknown."""
    dims: list[int | str | None] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


def _check_tensor(
    items: dict[str, onnx.ValueInfoProto],
    name: str,
    kind: str,
    expected: list[int],
    problems: list[str],
) -> None:
    """Check one input/output: present, float32, rank, dynamic batch, fixed other dims."""
    vi = items.get(name)
    if vi is None:
        problems.append(f"{kind} {name!r} is missing (has {sorted(items)})")
        return
    if vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        elem = onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type)
        problems.append(f"{kind} {name!r} has element type {elem}, expected FLOAT")
    dims = _dims(vi)
    if len(dims) != len(expected) + 1:
        problems.append(f"{kind} {name!r} has rank {len(dims)}, expected {len(expected) + 1}")
        return
    if isinstance(dims[0], int):
        problems.append(f"{kind} {name!r} has a fixed batch dimension {dims[0]}, expected dynamic")
    for axis, (got, want) in enumerate(zip(dims[1:], expected), start=1):
        if got != want:
            problems.append(f"{kind} {name!r} dimension {axis} is {got}, expected {want}")


def check_model(model: onnx.ModelProto, path: str | Path = "<model>", role: str | None = None) -> ModelInfo:
    """Check a loaded model against the contract; raise ``ContractError`` naming every mismatch.

    ``role`` ("segmenter" or "classifier"), when given, must match ``cxr.role``.
    """
    problems: list[str] = []
    if model.ir_version > MAX_IR_VERSION:
        problems.append(f"IR version {model.ir_version} is newer than {MAX_IR_VERSION}")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset < MIN_OPSET:
        problems.append(f"opset {opset} is older than {MIN_OPSET}")
    meta = {p.key: p.value for p in model.metadata_props}
    missing = [k for k in COMMON_KEYS if k not in meta]
    model_role = meta.get("cxr.role")
    if model_role == "classifier":
        missing += [k for k in CLASSIFIER_KEYS if k not in meta]
    if missing:
        problems.append("missing metadata " + ", ".join(missing))
        raise ContractError(path, problems)
    if meta["cxr.contract"] != CONTRACT_VERSION:
        problems.append(f"cxr.contract is {meta['cxr.contract']!r}, expected {CONTRACT_VERSION!r}")
    if model_role not in ("segmenter", "classifier"):
        problems.append(f"cxr.role is {model_role!r}, expected 'segmenter' or 'classifier'")
        raise ContractError(path, problems)
    if role is not None and model_role != role:
        problems.append(f"cxr.role is {model_role!r}, expected {role!r}")
    if meta["cxr.trained"] not in ("true", "false"):
        problems.append(f"cxr.trained is {meta['cxr.trained']!r}, expected 'true' or 'false'")
    for key in ("cxr.model_name", "cxr.model_version"):
        if not meta[key].strip():
            problems.append(f"{key} is empty")
    size = _positive_int(meta["cxr.input_size"], "cxr.input_size", problems)
    channels = tuple(c.strip() for c in meta["cxr.mask_channels"].split(",") if c.strip())
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    info = ModelInfo(
        path=str(path),
        role=model_role,
        input_size=size or 0,
        mask_channels=channels,
        trained=meta["cxr.trained"] == "true",
        model_name=meta["cxr.model_name"],
        model_version=meta["cxr.model_version"],
        metadata=meta,
    )
    if model_role == "segmenter":
        _check_segmenter(info, inputs, outputs, problems)
    else:
        _check_classifier(info, meta, inputs, outputs, problems)
    if problems:
        raise ContractError(path, problems)
    return info


def _check_segmenter(info: ModelInfo, inputs, outputs, problems: list[str]) -> None:
    if info.mask_channels[:3] != SEGMENTER_REQUIRED_CHANNELS:
        problems.append(
            f"cxr.mask_channels is {','.join(info.mask_channels)!r}, "
            f"expected to start with {','.join(SEGMENTER_REQUIRED_CHANNELS)!r}"
        )
    if len(set(info.mask_channels)) != len(info.mask_channels):
        problems.append("cxr.mask_channels has duplicates")
    if set(inputs) != {"image"}:
        problems.append(f"inputs are {sorted(inputs)}, expected ['image']")
    if set(outputs) != {"masks"}:
        problems.append(f"outputs are {sorted(outputs)}, expected ['masks']")
    s = info.input_size
    _check_tensor(inputs, "image", "input", [1, s, s], problems)
    _check_tensor(outputs, "masks", "output", [len(info.mask_channels), s, s], problems)


def _check_classifier(info: ModelInfo, meta: dict[str, str], inputs, outputs, problems: list[str]) -> None:
    if info.mask_channels != CLASSIFIER_MASK_CHANNELS:
        problems.append(
            f"cxr.mask_channels is {','.join(info.mask_channels)!r}, expected {','.join(CLASSIFIER_MASK_CHANNELS)!r}"
        )
    labels = tuple(meta["cxr.labels"].split(","))
    if labels != LABELS:
        problems.append(f"cxr.labels is {meta['cxr.labels']!r}, expected {','.join(LABELS)!r}")
    info.labels = labels
    info.thresholds = _floats(meta["cxr.thresholds"], "cxr.thresholds", len(LABELS), problems)
    if any(not 0.0 <= t <= 1.0 for t in info.thresholds):
        problems.append("cxr.thresholds must lie in [0, 1]")
    info.mean = _floats(meta["cxr.normalization_mean"], "cxr.normalization_mean", 3, problems)
    info.std = _floats(meta["cxr.normalization_std"], "cxr.normalization_std", 3, problems)
    if any(v <= 0 for v in info.std):
        problems.append("cxr.normalization_std must be positive")
    info.mask_size = _positive_int(meta["cxr.mask_size"], "cxr.mask_size", problems)
    s, k = info.input_size, info.mask_size or 0
    if s % CLASS_MAP_STRIDE:
        problems.append(f"cxr.input_size {s} is not a multiple of {CLASS_MAP_STRIDE}")
    if set(inputs) != {"image", "masks"}:
        problems.append(f"inputs are {sorted(inputs)}, expected ['image', 'masks']")
    if set(outputs) != {"probabilities", "class_maps"}:
        problems.append(f"outputs are {sorted(outputs)}, expected ['class_maps', 'probabilities']")
    h = s // CLASS_MAP_STRIDE
    _check_tensor(inputs, "image", "input", [3, s, s], problems)
    _check_tensor(inputs, "masks", "input", [len(CLASSIFIER_MASK_CHANNELS), k, k], problems)
    _check_tensor(outputs, "probabilities", "output", [len(LABELS)], problems)
    _check_tensor(outputs, "class_maps", "output", [len(LABELS), h, h], problems)


def check_file(path: str | Path, role: str | None = None, run: bool = False) -> ModelInfo:
    """Load ``path`` and check it; with ``run``, also run it in ONNX Runtime at batch 2 and check
    the output shapes and value ranges."""
    try:
        model = onnx.load(str(path))
    except Exception as err:  # onnx raises DecodeError and others: report them all the same way
        raise ContractError(path, [f"not a readable ONNX model: {err}"]) from err
    info = check_model(model, path, role)
    if run:
        run_check(info)
    return info


def example_inputs(info: ModelInfo, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the contracted shapes and ranges for a model."""
    rng = np.random.default_rng(seed)
    s = info.input_size
    if info.role == "segmenter":
        return {"image": rng.random((batch, 1, s, s), dtype=np.float32)}
    grey = rng.random((batch, 1, s, s), dtype=np.float32)
    mean = np.asarray(info.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(info.std, np.float32).reshape(1, 3, 1, 1)
    k = info.mask_size or 0
    masks = rng.random((batch, len(CLASSIFIER_MASK_CHANNELS), k, k), dtype=np.float32)
    return {"image": ((grey - mean) / std).astype(np.float32), "masks": masks}


def run_check(info: ModelInfo, batch: int = 2) -> None:
    """Run the model in ONNX Runtime on random inputs and check shapes and value ranges."""
    import onnxruntime as ort

    problems: list[str] = []
    try:
        session = ort.InferenceSession(info.path, providers=["CPUExecutionProvider"])
        outputs = session.run(None, example_inputs(info, batch))
    except Exception as err:  # onnxruntime raises its own exception classes: report them all
        raise ContractError(info.path, [f"ONNX Runtime cannot run it: {err}"]) from err
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, outputs))
    s = info.input_size
    if info.role == "segmenter":
        expected = {"masks": (batch, len(info.mask_channels), s, s)}
        bounded = ("masks",)
    else:
        h = s // CLASS_MAP_STRIDE
        expected = {"probabilities": (batch, len(LABELS)), "class_maps": (batch, len(LABELS), h, h)}
        bounded = ("probabilities",)
    for name, shape in expected.items():
        if got[name].shape != shape:
            problems.append(f"output {name!r} has shape {got[name].shape} at run time, expected {shape}")
        if not np.all(np.isfinite(got[name])):
            problems.append(f"output {name!r} has non-finite values")
    for name in bounded:
        lo, hi = float(got[name].min()), float(got[name].max())
        if lo < 0.0 or hi > 1.0:
            problems.append(f"output {name!r} ranges over [{lo}, {hi}], expected within [0, 1]")
    if problems:
        raise ContractError(info.path, problems)


def main(argv: list[str] | None = None) -> int:
    """``python -m cxr_models check [--role R] [--no-run] MODEL...``: exit 1 naming each mismatch."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cxr_models check", description="Check ONNX models against the cxr contract.")
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--role", choices=("segmenter", "classifier"), help="the role each model must have")
    parser.add_argument("--no-run", action="store_true", help="check the file only; do not run it in ONNX Runtime")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.models:
        try:
            info = check_file(path, role=args.role, run=not args.no_run)
        except ContractError as err:
            failed += 1
            print(f"REFUSED {err.path}:", *(f"\n  - {p}" for p in err.problems))
            continue
        trained = "trained" if info.trained else "UNTRAINED"
        print(f"ok {path}: {info.role} {info.model_name} {info.model_version} ({trained}), input {info.input_size}")
    return 1 if failed else 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
