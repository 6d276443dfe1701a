"""Evaluate: per-label ROC AUC of any conforming segmenter + classifier pair, run with ONNX Runtime
on a labelled folder of chest images (no PyTorch needed).

    python -m cxr_models.evaluate DATA_DIR [--segmenter onnx/anatomy-segmenter.onnx]
        [--classifier onnx/anatomy-xnet.onnx] [--labels DATA_DIR/labels.tsv] [--json OUT]

``labels.tsv`` is tab-separated with a ``file`` column and either one 0/1 column per label (named as
in ``contract.LABELS``) or NIH's ``Finding Labels`` / ``finding_labels`` column (``A|B``, "No Finding").
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import contract, images

ONNX_DIR = Path(__file__).resolve().parent.parent


def read_labels(path: Path) -> tuple[list[str], np.ndarray]:
    """File names and a [N,14] 0/1 matrix in ``contract.LABELS`` order."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows:
        raise ValueError(f"{path}: no rows")
    files, truth = [], []
    for row in rows:
        name = row.get("file") or row.get("Image Index")
        if not name:
            raise ValueError(f"{path}: a row has no 'file' column")
        if all(label in row for label in contract.LABELS):
            truth.append([int(row[label]) for label in contract.LABELS])
        else:
            findings = set((row.get("finding_labels") or row.get("Finding Labels") or "").split("|"))
            truth.append([int(label in findings) for label in contract.LABELS])
        files.append(name)
    return files, np.asarray(truth, dtype=np.int64)


def roc_auc(truth: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count half); NaN when one class is absent."""
    pos, neg = int(truth.sum()), int(len(truth) - truth.sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = score[order]
    i = 0
    while i < len(score):  # average ranks over ties
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[truth == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


class Pipeline:
    """The contract's inference path in ONNX Runtime: grey image -> segmenter -> organ masks -> classifier."""

    def __init__(self, segmenter: Path, classifier: Path, threads: int = 2):
        import onnxruntime as ort

        self.seg = contract.check_file(segmenter, role="segmenter")
        self.cls = contract.check_file(classifier, role="classifier")
        if self.seg.input_size != self.cls.input_size:
            raise contract.ContractError(classifier, [f"input_size {self.cls.input_size} differs from the segmenter's {self.seg.input_size}"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        self.seg_session = ort.InferenceSession(str(segmenter), options, providers=providers)
        self.cls_session = ort.InferenceSession(str(classifier), options, providers=providers)

    def run(self, greys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities [N,14] and the segmenter's masks [N,C,S,S] for [S,S] grey images."""
        (masks,) = self.seg_session.run(["masks"], {"image": images.segmenter_input(greys)})
        organ = images.organ_masks(masks, self.seg.mask_channels, self.cls.mask_size or 0)
        image = images.classifier_input(greys, self.cls.mean, self.cls.std)
        (probs,) = self.cls_session.run(["probabilities"], {"image": image, "masks": organ})
        return probs, masks


def evaluate(data_dir: Path, segmenter: Path, classifier: Path, labels: Path | None = None, batch: int = 4, threads: int = 2) -> dict:
    """Run the pair over every labelled image and return per-label AUCs and a summary."""
    files, truth = read_labels(labels or data_dir / "labels.tsv")
    pipeline = Pipeline(segmenter, classifier, threads)
    size = pipeline.seg.input_size
    scores = []
    start = time.perf_counter()
    for i in range(0, len(files), batch):
        greys = [images.load_grey(data_dir / f, size) for f in files[i : i + batch]]
        scores.append(pipeline.run(greys)[0])
    elapsed = time.perf_counter() - start
    score = np.concatenate(scores)
    per_label = {
        label: {"auc": roc_auc(truth[:, j], score[:, j]), "positives": int(truth[:, j].sum())}
        for j, label in enumerate(contract.LABELS)
    }
    aucs = [v["auc"] for v in per_label.values() if not np.isnan(v["auc"])]
    return {
        "images": len(files),
        "segmenter": {"path": str(segmenter), "name": pipeline.seg.model_name, "version": pipeline.seg.model_version, "trained": pipeline.seg.trained},
        "classifier": {"path": str(classifier), "name": pipeline.cls.model_name, "version": pipeline.cls.model_version, "trained": pipeline.cls.trained},
        "per_label": per_label,
        "mean_auc": float(np.mean(aucs)) if aucs else float("nan"),
        "labels_with_auc": len(aucs),
        "seconds": elapsed,
    }


def format_report(result: dict) -> str:
    lines = []
    for role in ("segmenter", "classifier"):
        m = result[role]
        lines.append(f"{role}: {m['name']} {m['version']} ({'trained' if m['trained'] else 'UNTRAINED'})")
    lines.append(f"{'label':<20}{'positives':>10}{'AUC':>8}")
    for label, v in result["per_label"].items():
        auc = "n/a" if np.isnan(v["auc"]) else f"{v['auc']:.3f}"
        lines.append(f"{label:<20}{v['positives']:>10}{auc:>8}")
    lines.append(f"mean AUC over {result['labels_with_auc']} labels: {result['mean_auc']:.3f} ({result['images']} images, {result['seconds']:.1f} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr_models.evaluate", description="Per-label ROC AUC of a model pair on a labelled folder.")
    parser.add_argument("data_dir", type=Path, help="folder of images with labels.tsv")
    parser.add_argument("--labels", type=Path, help="labels file (default DATA_DIR/labels.tsv)")
    parser.add_argument("--segmenter", type=Path, default=ONNX_DIR / "anatomy-segmenter.onnx")
    parser.add_argument("--classifier", type=Path, default=ONNX_DIR / "anatomy-xnet.onnx")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    try:
        result = evaluate(args.data_dir, args.segmenter, args.classifier, args.labels, args.batch, args.threads)
    except contract.ContractError as err:
        print(f"evaluate: model refused: {err}", file=sys.stderr)
        return 1
    print(format_report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, allow_nan=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
