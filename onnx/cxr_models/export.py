"""Export: a checkpoint (or a seeded random init) -> contract-conforming ONNX files, then a parity
check of ONNX Runtime against PyTorch on real chest images that fails loudly above 1e-4.

    python -m cxr_models.export --tiny                 # onnx/tiny/*.onnx, committed test models
    python -m cxr_models.export                        # onnx/*.onnx, full size, untrained
    python -m cxr_models.export --segmenter-checkpoint seg.pt --classifier-checkpoint xnet.pt
"""

from __future__ import annotations

import argparse
import io
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from . import anatomy_xnet, contract, images, segmenter

ONNX_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = ONNX_DIR.parent
DEFAULT_IMAGES = REPO_ROOT / "tests" / "fixtures" / "nih"
SEGMENTER_FILE = "anatomy-segmenter.onnx"
CLASSIFIER_FILE = "anatomy-xnet.onnx"
PARITY_TOLERANCE = 1e-4


class ParityError(Exception):
    """ONNX Runtime and PyTorch disagree by more than the tolerance."""


def untrained_version(seed: int) -> str:
    return f"0.0.0-untrained-seed{seed}"


def build_segmenter(config: segmenter.SegmenterConfig, checkpoint: Path | None, seed: int):
    """The segmenter in eval mode and its metadata: from a checkpoint, or seeded random weights."""
    if checkpoint is not None:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
        config = segmenter.SegmenterConfig.from_dict(ckpt["config"])
        model = segmenter.UNet(config)
        model.load_state_dict(ckpt["state_dict"])
        trained, version = bool(ckpt.get("trained", True)), str(ckpt["model_version"])
    else:
        torch.manual_seed(seed)
        model = segmenter.UNet(config)
        trained, version = False, untrained_version(seed)
    name = f"anatomy-segmenter-unet{config.base_channels}x{config.depth}"
    meta = {
        "cxr.contract": contract.CONTRACT_VERSION,
        "cxr.role": "segmenter",
        "cxr.model_name": name,
        "cxr.model_version": version,
        "cxr.input_size": str(config.input_size),
        "cxr.trained": "true" if trained else "false",
        "cxr.mask_channels": ",".join(config.channels),
    }
    return model.eval(), meta


def build_classifier(config: anatomy_xnet.XNetConfig, checkpoint: Path | None, seed: int):
    """Anatomy-XNet in eval mode and its metadata: from a checkpoint, or seeded random weights."""
    thresholds = [0.5] * len(contract.LABELS)
    if checkpoint is not None:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
        config = anatomy_xnet.XNetConfig.from_dict(ckpt["config"])
        model = anatomy_xnet.AnatomyXNet(config)
        model.load_state_dict(ckpt["state_dict"])
        trained, version = bool(ckpt.get("trained", True)), str(ckpt["model_version"])
        thresholds = [float(t) for t in ckpt.get("thresholds", thresholds)]
    else:
        torch.manual_seed(seed)
        model = anatomy_xnet.AnatomyXNet(config)
        trained, version = False, untrained_version(seed)
    depth = sum(2 * n for n in config.block_config) + 5  # conv layers + classifier, as in "121"
    name = f"anatomy-xnet-densenet{depth}"
    meta = {
        "cxr.contract": contract.CONTRACT_VERSION,
        "cxr.role": "classifier",
        "cxr.model_name": name,
        "cxr.model_version": version,
        "cxr.input_size": str(config.input_size),
        "cxr.trained": "true" if trained else "false",
        "cxr.mask_channels": ",".join(contract.CLASSIFIER_MASK_CHANNELS),
        "cxr.mask_size": str(config.mask_size),
        "cxr.labels": ",".join(contract.LABELS),
        "cxr.thresholds": ",".join(f"{t:.6g}" for t in thresholds),
        "cxr.normalization_mean": ",".join(str(v) for v in contract.IMAGENET_MEAN),
        "cxr.normalization_std": ",".join(str(v) for v in contract.IMAGENET_STD),
    }
    return model.eval(), meta


def _fix_shape(value_info: onnx.ValueInfoProto, dims: tuple[int, ...]) -> None:
    """Write the contract's shape on a graph output: batch "N", the other dimensions fixed.

    The TorchScript exporter leaves symbolic names on some output dimensions that are in fact
    fixed; ``contract.run_check`` then verifies the real shapes in ONNX Runtime."""
    shape = value_info.type.tensor_type.shape
    del shape.dim[:]
    shape.dim.add().dim_param = "N"
    for d in dims:
        shape.dim.add().dim_value = d


def _to_onnx(model, args, input_names, output_names, output_dims, path: Path, meta: dict[str, str]) -> None:
    """TorchScript-based export (deterministic, fast), then metadata, IR version and a full check."""
    dynamic = {name: {0: "N"} for name in input_names + output_names}
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is deliberate
        torch.onnx.export(
            model,
            args,
            buffer,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic,
            opset_version=contract.OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    proto.ir_version = contract.IR_VERSION
    for output, dims in zip(proto.graph.output, output_dims):
        _fix_shape(output, dims)
    proto.producer_name = "cxr_models.export"
    proto.producer_version = contract.CONTRACT_VERSION
    del proto.metadata_props[:]
    for key, value in sorted(meta.items()):
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = (
        f"{meta['cxr.model_name']} {meta['cxr.model_version']} — "
        + ("trained weights" if meta["cxr.trained"] == "true" else "UNTRAINED random weights: outputs carry no meaning")
    )
    onnx.checker.check_model(proto, full_check=True)
    contract.check_model(proto, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(path)


def export_segmenter(model: segmenter.UNet, meta: dict[str, str], path: Path) -> None:
    s = model.config.input_size
    dims = [(len(model.config.channels), s, s)]
    _to_onnx(model, (torch.zeros(1, 1, s, s),), ["image"], ["masks"], dims, path, meta)


def export_classifier(model: anatomy_xnet.AnatomyXNet, meta: dict[str, str], path: Path) -> None:
    c = model.config
    args = (torch.zeros(1, 3, c.input_size, c.input_size), torch.zeros(1, 2, c.mask_size, c.mask_size))
    k, h = len(contract.LABELS), c.map_size
    dims = [(k,), (k, h, h)]
    _to_onnx(model, args, ["image", "masks"], ["probabilities", "class_maps"], dims, path, meta)


def fixture_images(folder: Path, limit: int) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise FileNotFoundError(f"no images in {folder}")
    return files[:limit]


def parity(seg_model, seg_path: Path, cls_model, cls_path: Path, image_files: list[Path], batch: int = 2) -> dict[str, float]:
    """Run PyTorch and ONNX Runtime on the same real images (in batches, so the dynamic batch axis
    is exercised) and return the max abs difference per output; raise ParityError above 1e-4."""
    import onnxruntime as ort

    seg_sess = ort.InferenceSession(str(seg_path), providers=["CPUExecutionProvider"])
    cls_sess = ort.InferenceSession(str(cls_path), providers=["CPUExecutionProvider"])
    s_seg, cfg = seg_model.config.input_size, cls_model.config
    worst = {"masks": 0.0, "probabilities": 0.0, "class_maps": 0.0}
    for start in range(0, len(image_files), batch):
        chunk = image_files[start : start + batch]
        seg_in = images.segmenter_input([images.load_grey(p, s_seg) for p in chunk])
        (masks_ort,) = seg_sess.run(None, {"image": seg_in})
        with torch.no_grad():
            masks_pt = seg_model(torch.from_numpy(seg_in)).numpy()
        worst["masks"] = max(worst["masks"], float(np.abs(masks_ort - masks_pt).max()))
        organ = images.organ_masks(masks_ort, seg_model.config.channels, cfg.mask_size)
        cls_in = images.classifier_input([images.load_grey(p, cfg.input_size) for p in chunk])
        probs_ort, maps_ort = cls_sess.run(["probabilities", "class_maps"], {"image": cls_in, "masks": organ})
        with torch.no_grad():
            probs_pt, maps_pt = (t.numpy() for t in cls_model(torch.from_numpy(cls_in), torch.from_numpy(organ)))
        worst["probabilities"] = max(worst["probabilities"], float(np.abs(probs_ort - probs_pt).max()))
        worst["class_maps"] = max(worst["class_maps"], float(np.abs(maps_ort - maps_pt).max()))
    bad = {k: v for k, v in worst.items() if not v <= PARITY_TOLERANCE}
    if bad:
        raise ParityError(f"ONNX Runtime differs from PyTorch by more than {PARITY_TOLERANCE}: {bad}")
    return worst


def run(
    out_dir: Path,
    tiny: bool,
    seed: int = 0,
    segmenter_checkpoint: Path | None = None,
    classifier_checkpoint: Path | None = None,
    image_dir: Path = DEFAULT_IMAGES,
    parity_images: int = 4,
) -> dict[str, float]:
    """Export both models into ``out_dir`` and check their parity; returns the parity figures."""
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    seg_cfg = segmenter.TINY if tiny else segmenter.FULL
    cls_cfg = anatomy_xnet.TINY if tiny else anatomy_xnet.FULL
    seg_model, seg_meta = build_segmenter(seg_cfg, segmenter_checkpoint, seed)
    cls_model, cls_meta = build_classifier(cls_cfg, classifier_checkpoint, seed)
    if seg_model.config.input_size != cls_model.config.input_size:
        raise ValueError("segmenter and classifier input sizes differ")
    seg_path, cls_path = out_dir / SEGMENTER_FILE, out_dir / CLASSIFIER_FILE
    export_segmenter(seg_model, seg_meta, seg_path)
    export_classifier(cls_model, cls_meta, cls_path)
    for path in (seg_path, cls_path):
        contract.check_file(path, run=True)
    return parity(seg_model, seg_path, cls_model, cls_path, fixture_images(image_dir, parity_images))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr_models.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny test models (input 64, masks 32) into onnx/tiny")
    parser.add_argument("--out-dir", type=Path, help="output folder (default onnx/ or onnx/tiny/)")
    parser.add_argument("--seed", type=int, default=0, help="seed for random weights (default 0)")
    parser.add_argument("--segmenter-checkpoint", type=Path, help="a checkpoint written by cxr_models.train")
    parser.add_argument("--classifier-checkpoint", type=Path, help="a checkpoint written by cxr_models.train")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="real chest images for the parity check")
    parser.add_argument("--parity-images", type=int, default=4, help="how many of them (default 4)")
    args = parser.parse_args(argv)
    out_dir = args.out_dir or (ONNX_DIR / "tiny" if args.tiny else ONNX_DIR)
    try:
        worst = run(
            out_dir, args.tiny, args.seed, args.segmenter_checkpoint, args.classifier_checkpoint, args.images, args.parity_images
        )
    except (ParityError, contract.ContractError) as err:
        print(f"export FAILED: {err}", file=sys.stderr)
        return 1
    for name in (SEGMENTER_FILE, CLASSIFIER_FILE):
        path = out_dir / name
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    print("parity (max |onnxruntime - torch|): " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
