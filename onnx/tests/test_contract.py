"""The contract checker accepts the shipped models and refuses broken ones, naming the mismatch."""

from __future__ import annotations

import onnx
import pytest
from onnx import helper

from conftest import COMMITTED_TINY
from cxr_models import contract

SEG = COMMITTED_TINY / "anatomy-segmenter.onnx"
CLS = COMMITTED_TINY / "anatomy-xnet.onnx"


def test_committed_tiny_models_conform_and_run():
    seg = contract.check_file(SEG, role="segmenter", run=True)
    cls = contract.check_file(CLS, role="classifier", run=True)
    assert (seg.input_size, cls.input_size, cls.mask_size) == (64, 64, 32)
    assert seg.trained is False and cls.trained is False
    assert cls.labels == contract.LABELS
    assert cls.mean == contract.IMAGENET_MEAN and cls.std == contract.IMAGENET_STD


def test_check_command_exit_codes(tmp_path, capsys):
    assert contract.main([str(SEG), str(CLS)]) == 0
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    assert contract.main([str(SEG), str(broken)]) == 1
    assert "REFUSED" in capsys.readouterr().out


def _meta(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def _set_meta(model: onnx.ModelProto, key: str, value: str | None) -> None:
    meta = _meta(model)
    if value is None:
        meta.pop(key)
    else:
        meta[key] = value
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)


def _rename_input(model: onnx.ModelProto, old: str, new: str) -> None:
    for i in model.graph.input:
        if i.name == old:
            i.name = new
    for node in model.graph.node:
        for j, name in enumerate(node.input):
            if name == old:
                node.input[j] = new


def _refused(model: onnx.ModelProto, tmp_path, *fragments: str, run: bool = False) -> str:
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    with pytest.raises(contract.ContractError) as err:
        contract.check_file(path, run=run)
    text = str(err.value)
    for fragment in fragments:
        assert fragment in text, text
    return text


def _load(path):
    return onnx.load(str(path))


def test_refuses_wrong_input_name(tmp_path):
    m = _load(SEG)
    _rename_input(m, "image", "input")
    _refused(m, tmp_path, "input 'image' is missing", "inputs are ['input']")


def test_refuses_wrong_rank(tmp_path):
    m = _load(CLS)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    del dims[-1]
    _refused(m, tmp_path, "input 'image' has rank 3, expected 4")


def test_refuses_label_count_different_from_outputs(tmp_path):
    m = _load(CLS)
    _set_meta(m, "cxr.labels", ",".join(contract.LABELS[:13]))
    _set_meta(m, "cxr.thresholds", ",".join(["0.5"] * 13))
    _refused(m, tmp_path, "cxr.labels is", "cxr.thresholds has 13 values, expected 14")


def test_refuses_missing_metadata(tmp_path):
    m = _load(CLS)
    _set_meta(m, "cxr.normalization_std", None)
    _set_meta(m, "cxr.trained", None)
    _refused(m, tmp_path, "missing metadata cxr.trained, cxr.normalization_std")


def test_refuses_ir_version_too_new(tmp_path):
    m = _load(SEG)
    m.ir_version = 14
    _refused(m, tmp_path, "IR version 14 is newer than 13")


def test_refuses_old_opset(tmp_path):
    m = _load(SEG)
    m.opset_import[0].version = 13
    _refused(m, tmp_path, "opset 13 is older than 17")


def test_refuses_fixed_batch_and_wrong_size(tmp_path):
    m = _load(SEG)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_value = 1
    _set_meta(m, "cxr.input_size", "512")
    _refused(m, tmp_path, "fixed batch dimension 1", "dimension 2 is 64, expected 512")


def test_refuses_segmenter_without_heart_channel(tmp_path):
    m = _load(SEG)
    _set_meta(m, "cxr.mask_channels", "left_lung,right_lung,lungs,left_clavicle,right_clavicle")
    _refused(m, tmp_path, "expected to start with 'left_lung,right_lung,heart'")


def test_refuses_bad_values(tmp_path):
    m = _load(CLS)
    _set_meta(m, "cxr.trained", "maybe")
    _set_meta(m, "cxr.thresholds", ",".join(["1.5"] * 14))
    _set_meta(m, "cxr.normalization_std", "0.2,0,0.2")
    _set_meta(m, "cxr.role", "classifier")
    _refused(m, tmp_path, "cxr.trained is 'maybe'", "cxr.thresholds must lie in [0, 1]", "cxr.normalization_std must be positive")


def test_refuses_wrong_role(tmp_path):
    with pytest.raises(contract.ContractError, match="cxr.role is 'segmenter', expected 'classifier'"):
        contract.check_file(SEG, role="classifier")


def test_refuses_probabilities_outside_0_1_at_run_time(tmp_path):
    m = _load(CLS)
    # bypass the final Sigmoid: the output becomes the raw logits
    sigmoid = next(n for n in m.graph.node if n.op_type == "Sigmoid" and "probabilities" in n.output)
    m.graph.node.remove(sigmoid)
    m.graph.node.append(helper.make_node("Mul", [sigmoid.input[0], "ten"], ["probabilities"]))
    m.graph.initializer.append(helper.make_tensor("ten", onnx.TensorProto.FLOAT, [], [10.0]))
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    contract.check_file(path)  # statically fine
    with pytest.raises(contract.ContractError, match="output 'probabilities' ranges over"):
        contract.check_file(path, run=True)
