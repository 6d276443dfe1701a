"""Export: parity of ONNX Runtime against PyTorch on real chest images, reproducibility, metadata."""

from __future__ import annotations

import onnx
import pytest
import torch

from conftest import COMMITTED_TINY, NIH
from cxr_models import anatomy_xnet, contract, export, segmenter


def test_parity_on_real_images_is_within_1e_4(tiny_export):
    _, worst = tiny_export
    assert set(worst) == {"masks", "probabilities", "class_maps"}
    for name, diff in worst.items():
        assert diff <= 1e-4, (name, diff)


def test_committed_tiny_models_are_reproduced_byte_for_byte(tiny_export):
    out, _ = tiny_export
    for name in (export.SEGMENTER_FILE, export.CLASSIFIER_FILE):
        fresh, committed = (out / name).read_bytes(), (COMMITTED_TINY / name).read_bytes()
        assert fresh == committed, f"{name}: regenerate with `python -m cxr_models export --tiny`"
        assert len(committed) < 1_000_000


def test_exported_metadata_follows_the_contract(tiny_export):
    out, _ = tiny_export
    seg = onnx.load(str(out / export.SEGMENTER_FILE))
    cls = onnx.load(str(out / export.CLASSIFIER_FILE))
    for model in (seg, cls):
        assert model.ir_version <= 13
        assert model.opset_import[0].version >= 17
    seg_meta = {p.key: p.value for p in seg.metadata_props}
    cls_meta = {p.key: p.value for p in cls.metadata_props}
    assert seg_meta["cxr.trained"] == cls_meta["cxr.trained"] == "false"
    assert seg_meta["cxr.input_size"] == cls_meta["cxr.input_size"] == "64"
    assert cls_meta["cxr.mask_size"] == "32"
    assert seg_meta["cxr.mask_channels"].split(",")[:3] == ["left_lung", "right_lung", "heart"]
    assert cls_meta["cxr.labels"] == "Atelectasis,Cardiomegaly,Effusion,Infiltration,Mass,Nodule,Pneumonia,Pneumothorax,Consolidation,Edema,Emphysema,Fibrosis,Pleural_Thickening,Hernia"
    assert len(cls_meta["cxr.thresholds"].split(",")) == 14


def test_parity_check_fails_loudly_when_onnx_and_torch_disagree(tiny_export):
    out, _ = tiny_export
    seg_model, _ = export.build_segmenter(segmenter.TINY, None, 0)
    cls_model, _ = export.build_classifier(anatomy_xnet.TINY, None, 0)
    with torch.no_grad():  # the PyTorch side drifts from the exported weights
        cls_model.pwap.classifier.bias.add_(0.01)
    with pytest.raises(export.ParityError, match="probabilities"):
        export.parity(seg_model, out / export.SEGMENTER_FILE, cls_model, out / export.CLASSIFIER_FILE, export.fixture_images(NIH, 2))


def test_different_seeds_give_different_weights(tmp_path):
    a, _ = export.build_segmenter(segmenter.TINY, None, 0)
    b, _ = export.build_segmenter(segmenter.TINY, None, 1)
    assert not torch.equal(a.head.weight, b.head.weight)
