"""Write contract-violating variants of the tiny models, for tests/infer.rs.

  broken_models.py TINY_DIR OUT_DIR

Each variant breaks exactly one rule of the contract and still loads in ONNX Runtime (so the
daemon's own check, not ORT, must refuse it), except ir14 which ORT itself cannot read:
  wrong-input-name.onnx   segmenter whose input is "pixels" instead of "image"
  wrong-rank.onnx         segmenter whose input is [N,S,S] (an Unsqueeze feeds the original graph)
  label-count.onnx        classifier whose cxr.labels/thresholds name 13 labels for 14 outputs
  missing-metadata.onnx   segmenter without cxr.input_size
  ir14.onnx               segmenter saved with IR version 14
  wrong-role.onnx         segmenter with cxr.role = "classifier"
"""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
from onnx import helper


def load(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path))


def set_meta(model: onnx.ModelProto, key: str, value: str | None) -> None:
    props = {p.key: p.value for p in model.metadata_props}
    if value is None:
        props.pop(key, None)
    else:
        props[key] = value
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)


def rename_input(model: onnx.ModelProto, old: str, new: str) -> None:
    for i in model.graph.input:
        if i.name == old:
            i.name = new
    for node in model.graph.node:
        for j, name in enumerate(node.input):
            if name == old:
                node.input[j] = new


def squeeze_input(model: onnx.ModelProto) -> None:
    """Make input "image" rank 3: a new [N,S,S] input, unsqueezed on axis 1 into the old one."""
    rename_input(model, "image", "image_4d")
    old = next(i for i in model.graph.input if i.name == "image_4d")
    dims = old.type.tensor_type.shape.dim
    s = dims[2].dim_value
    new = helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["N", s, s])
    axes = helper.make_tensor("unsqueeze_axes", onnx.TensorProto.INT64, [1], [1])
    model.graph.initializer.append(axes)
    model.graph.node.insert(0, helper.make_node("Unsqueeze", ["image", "unsqueeze_axes"], ["image_4d"]))
    model.graph.input.remove(old)
    model.graph.input.insert(0, new)


def main(tiny: str, out: str) -> None:
    tiny_dir, out_dir = Path(tiny), Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    seg = tiny_dir / "anatomy-segmenter.onnx"
    cls = tiny_dir / "anatomy-xnet.onnx"

    m = load(seg)
    rename_input(m, "image", "pixels")
    onnx.save(m, str(out_dir / "wrong-input-name.onnx"))

    m = load(seg)
    squeeze_input(m)
    onnx.checker.check_model(m)
    onnx.save(m, str(out_dir / "wrong-rank.onnx"))

    m = load(cls)
    props = {p.key: p.value for p in m.metadata_props}
    set_meta(m, "cxr.labels", ",".join(props["cxr.labels"].split(",")[:13]))
    set_meta(m, "cxr.thresholds", ",".join(props["cxr.thresholds"].split(",")[:13]))
    onnx.save(m, str(out_dir / "label-count.onnx"))

    m = load(seg)
    set_meta(m, "cxr.input_size", None)
    onnx.save(m, str(out_dir / "missing-metadata.onnx"))

    m = load(seg)
    m.ir_version = 14
    onnx.save(m, str(out_dir / "ir14.onnx"))

    m = load(seg)
    set_meta(m, "cxr.role", "classifier")
    onnx.save(m, str(out_dir / "wrong-role.onnx"))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
