"""Train smoke (1-2 CPU steps on real NIH images, SYNTHETIC organ masks), export of the checkpoints,
and evaluate on the labelled NIH fixtures."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from conftest import COMMITTED_TINY, NIH
from cxr_models import contract, evaluate, export, train


def _synthetic_masks(folder, files):
    """Ellipses where lungs and heart roughly sit: stand-ins for real annotations (none here)."""
    yy, xx = np.mgrid[0:128, 0:128]

    def ellipse(cx, cy, rx, ry):
        return ((((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) <= 1).astype(np.uint8) * 255

    shapes = {"left_lung": ellipse(88, 60, 20, 35), "right_lung": ellipse(40, 60, 20, 35), "heart": ellipse(70, 80, 18, 15)}
    for f in files:
        for channel, mask in shapes.items():
            (folder / channel).mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(folder / channel / f.name)


def test_train_both_models_then_export_them(tmp_path):
    images = sorted(NIH.glob("*.png"))
    _synthetic_masks(tmp_path / "masks", images[:4])  # 4 annotated, all 12 used unlabelled
    seg_ckpt, cls_ckpt = tmp_path / "seg.pt", tmp_path / "xnet.pt"
    common = ["--tiny", "--batch", "2", "--workers", "0", "--max-steps", "2", "--model-version", "0.0.1-smoke"]
    assert train.main(["segmenter", "--images", str(NIH), "--masks", str(tmp_path / "masks"), "--unlabelled", str(NIH), "--out", str(seg_ckpt), *common]) == 0
    assert train.main([
        "classifier", "--images", str(NIH), "--labels", str(NIH / "labels.tsv"), "--segmenter-checkpoint", str(seg_ckpt),
        "--val-fraction", "0.4", "--out", str(cls_ckpt), *common,
    ]) == 0
    import torch

    seg = torch.load(seg_ckpt, weights_only=False)
    cls = torch.load(cls_ckpt, weights_only=False)
    assert len(seg["history"]) == 2 and all(math.isfinite(h["loss"]) for h in seg["history"])
    assert len(cls["thresholds"]) == 14
    untrained = export.build_segmenter(train.segmenter.TINY, None, 0)[0].state_dict()
    assert any(not torch.equal(untrained[k], v) for k, v in seg["state_dict"].items())
    out = tmp_path / "onnx"
    worst = export.run(out, tiny=True, segmenter_checkpoint=seg_ckpt, classifier_checkpoint=cls_ckpt, parity_images=2)
    assert max(worst.values()) <= 1e-4
    info = contract.check_file(out / export.CLASSIFIER_FILE, run=True)
    assert info.trained and info.model_version == "0.0.1-smoke"
    assert info.thresholds == tuple(pytest.approx(t, rel=1e-5) for t in cls["thresholds"])


def test_roc_auc_matches_hand_computed_values():
    t = np.array([0, 0, 1, 1])
    assert evaluate.roc_auc(t, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert evaluate.roc_auc(t, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert evaluate.roc_auc(t, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5  # ties count half
    assert math.isnan(evaluate.roc_auc(np.array([0, 0]), np.array([0.1, 0.2])))


def test_evaluate_on_the_nih_fixtures(capsys):
    result = evaluate.evaluate(NIH, COMMITTED_TINY / "anatomy-segmenter.onnx", COMMITTED_TINY / "anatomy-xnet.onnx")
    assert result["images"] == 12
    absent = {"Edema", "Pleural_Thickening", "Hernia"}  # no positive among the 12
    for label, v in result["per_label"].items():
        if label in absent:
            assert math.isnan(v["auc"]) and v["positives"] == 0
        else:
            assert 0.0 <= v["auc"] <= 1.0 and v["positives"] > 0
    assert result["labels_with_auc"] == 11
    assert evaluate.main([str(NIH), "--segmenter", str(COMMITTED_TINY / "anatomy-segmenter.onnx"), "--classifier", str(COMMITTED_TINY / "anatomy-xnet.onnx")]) == 0
    out = capsys.readouterr().out
    assert "UNTRAINED" in out and "mean AUC over 11 labels" in out


def test_evaluate_refuses_swapped_models(capsys):
    code = evaluate.main([str(NIH), "--segmenter", str(COMMITTED_TINY / "anatomy-xnet.onnx"), "--classifier", str(COMMITTED_TINY / "anatomy-segmenter.onnx")])
    assert code == 1
    assert "cxr.role is 'classifier', expected 'segmenter'" in capsys.readouterr().err


def test_labels_from_nih_finding_labels_column(tmp_path):
    path = tmp_path / "labels.tsv"
    path.write_text("Image Index\tFinding Labels\tPatient ID\na.png\tEffusion|Hernia\t1\nb.png\tNo Finding\t2\n")
    files, truth = evaluate.read_labels(path)
    assert files == ["a.png", "b.png"]
    assert truth[0].tolist() == [int(l in ("Effusion", "Hernia")) for l in contract.LABELS]
    assert truth[1].sum() == 0
