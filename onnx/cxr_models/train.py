"""Train: the segmenter semi-supervised (mean teacher), then Anatomy-XNet on the 14 labels (BCE), on a
GPU machine with NIH ChestX-ray14 / CheXpert data. Checkpoints feed ``cxr_models.export``.

    python -m cxr_models.train segmenter --images IMG_DIR --masks MASK_DIR [--unlabelled NIH_DIR] --out seg.pt
    python -m cxr_models.train classifier --images NIH_DIR --labels labels.tsv --segmenter-checkpoint seg.pt \\
        [--backbone-weights densenet121.pth] --out xnet.pt

Mask folder layout: ``MASK_DIR/<channel>/<image file name>`` (a grey PNG, >127 = organ), one
sub-folder per segmenter channel (left_lung, right_lung, heart, left_clavicle, right_clavicle). A
missing file means "not annotated" for that image and channel (no loss), so datasets with lungs only
(Montgomery, Shenzhen) mix with ones that have all organs (JSRT/SCR). See onnx/README.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import csv
import datetime
import math
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from . import anatomy_xnet, contract, evaluate, images, segmenter

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def load_mask(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        arr = (np.asarray(img.convert("L")) > 127).astype(np.float32)
    return images.resize(arr, size)


class MaskedImages(Dataset):
    """Images with (possibly partial) organ annotations: (grey [1,S,S], masks [C,S,S], annotated [C])."""

    def __init__(self, image_dir: Path, mask_dir: Path, size: int, channels: tuple[str, ...]):
        self.size, self.channels, self.mask_dir = size, channels, mask_dir
        self.files = [p for p in list_images(image_dir) if any((mask_dir / c / p.name).exists() for c in channels)]
        if not self.files:
            raise FileNotFoundError(f"no image in {image_dir} has a mask under {mask_dir}/<channel>/")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path = self.files[i]
        grey = images.load_grey(path, self.size)
        masks = np.zeros((len(self.channels), self.size, self.size), np.float32)
        annotated = np.zeros(len(self.channels), np.float32)
        for c, name in enumerate(self.channels):
            mask_path = self.mask_dir / name / path.name
            if mask_path.exists():
                masks[c], annotated[c] = load_mask(mask_path, self.size), 1.0
        return torch.from_numpy(grey)[None], torch.from_numpy(masks), torch.from_numpy(annotated)


class Images(Dataset):
    """Unlabelled images (grey [1,S,S])."""

    def __init__(self, files: list[Path], size: int):
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return torch.from_numpy(images.load_grey(self.files[i], self.size))[None]


class LabelledImages(Dataset):
    """Images with the 14 labels: (grey [1,S,S], labels [14])."""

    def __init__(self, image_dir: Path, files: list[str], truth: np.ndarray, size: int):
        self.image_dir, self.files, self.truth, self.size = image_dir, files, truth, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        grey = images.load_grey(self.image_dir / self.files[i], self.size)
        return torch.from_numpy(grey)[None], torch.from_numpy(self.truth[i].astype(np.float32))


def random_affine(*tensors: torch.Tensor, degrees: float = 7.0, scale: float = 0.08, shift: float = 0.05) -> list[torch.Tensor]:
    """The same small random rotation/scale/shift applied to every [N,C,H,W] tensor (image and masks)."""
    n = tensors[0].shape[0]
    angle = torch.empty(n).uniform_(-degrees, degrees) * math.pi / 180
    s = torch.empty(n).uniform_(1 - scale, 1 + scale)
    t = torch.empty(n, 2).uniform_(-shift, shift)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle) / s, -torch.sin(angle) / s
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle) / s, torch.cos(angle) / s
    theta[:, :, 2] = t
    theta = theta.to(tensors[0].device)
    grid = F.affine_grid(theta, list(tensors[0].shape), align_corners=False)
    return [F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False) for x in tensors]


def intensity_jitter(x: torch.Tensor) -> torch.Tensor:
    """Random gamma, contrast and noise on [0,1] images: the mean teacher's student perturbation."""
    n = x.shape[0]
    gamma = torch.empty(n, 1, 1, 1, device=x.device).uniform_(0.7, 1.4)
    contrast = torch.empty(n, 1, 1, 1, device=x.device).uniform_(0.8, 1.2)
    y = x.clamp(0, 1) ** gamma
    y = (y - 0.5) * contrast + 0.5 + 0.02 * torch.randn_like(y)
    return y.clamp(0, 1)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice over the annotated (image, channel) pairs only."""
    weight = annotated[:, :, None, None].expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum") / weight.sum().clamp(min=1)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(2, 3))
    dice = 1 - (2 * inter + 1) / (prob.sum(dim=(2, 3)) + target.sum(dim=(2, 3)) + 1)
    dice = (dice * annotated).sum() / annotated.sum().clamp(min=1)
    return bce + dice


def _cycle(loader):
    while True:
        yield from loader


def _device(name: str | None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def _version(given: str | None) -> str:
    return given or "1.0.0-" + datetime.date.today().isoformat()


def train_segmenter(args) -> dict:
    """Mean teacher (Tarvainen & Valpola 2017): supervised BCE+Dice on the annotated images, plus a
    consistency loss between the student on a perturbed unlabelled image and the EMA teacher on the
    clean one, its weight ramped up over the first ``--rampup`` steps."""
    device = _device(args.device)
    base = segmenter.TINY if args.tiny else segmenter.FULL
    config = dataclasses.replace(base, input_size=args.size or base.input_size)
    student = segmenter.UNet(config).to(device)
    teacher = copy.deepcopy(student).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    labelled = MaskedImages(args.images, args.masks, config.input_size, config.channels)
    lab_loader = DataLoader(labelled, batch_size=args.batch, shuffle=True, num_workers=args.workers, drop_last=len(labelled) > args.batch)
    unlab_iter = None
    if args.unlabelled:
        unlab = Images(list_images(args.unlabelled), config.input_size)
        unlab_iter = _cycle(DataLoader(unlab, batch_size=args.batch, shuffle=True, num_workers=args.workers, drop_last=len(unlab) > args.batch))
    optimiser = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.max_steps or args.epochs * len(lab_loader)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=args.lr, total_steps=max(steps, 1), pct_start=0.1) if steps > 1 else None
    history, step = [], 0
    for grey, masks, annotated in _cycle(lab_loader):
        if step >= steps:
            break
        student.train()
        grey, masks, annotated = grey.to(device), masks.to(device), annotated.to(device)
        grey, masks = random_affine(grey, masks)
        loss = segmentation_loss(student.logits(intensity_jitter(grey)), (masks > 0.5).float(), annotated)
        consistency = torch.zeros((), device=device)
        if unlab_iter is not None:
            x = next(unlab_iter).to(device)
            with torch.no_grad():
                target = teacher(x)
            consistency = F.mse_loss(torch.sigmoid(student.logits(intensity_jitter(x))), target)
            ramp = math.exp(-5 * (1 - min(step / max(args.rampup, 1), 1.0)) ** 2)
            loss = loss + args.consistency * ramp * consistency
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if schedule:
            schedule.step()
        alpha = min(1 - 1 / (step + 1), args.ema)
        with torch.no_grad():
            for t, s in zip(teacher.state_dict().values(), student.state_dict().values()):
                if t.dtype.is_floating_point:
                    t.mul_(alpha).add_(s.detach(), alpha=1 - alpha)
                else:
                    t.copy_(s)
        history.append({"step": step, "loss": loss.item(), "consistency": consistency.item()})
        if step % args.log_every == 0:
            print(f"segmenter step {step}/{steps} loss {loss.item():.4f} consistency {consistency.item():.4f}", flush=True)
        step += 1
    # the teacher (EMA weights) is the better model in mean-teacher training: ship it
    checkpoint = {
        "kind": "segmenter",
        "config": config.to_dict(),
        "state_dict": {k: v.cpu() for k, v in teacher.state_dict().items()},
        "trained": True,
        "model_version": _version(args.model_version),
        "history": history,
    }
    torch.save(checkpoint, args.out)
    print(f"wrote {args.out}")
    return checkpoint


def organ_masks_torch(seg: torch.Tensor, channels: tuple[str, ...], mask_size: int) -> torch.Tensor:
    """Torch twin of ``images.organ_masks`` (block average), for masks computed during training."""
    idx = [channels.index(c) for c in contract.SEGMENTER_REQUIRED_CHANNELS]
    organs = torch.stack([torch.maximum(seg[:, idx[0]], seg[:, idx[1]]), seg[:, idx[2]]], dim=1)
    factor = seg.shape[-1] // mask_size
    return F.avg_pool2d(organs, factor) if factor > 1 else organs


def split_by_patient(files: list[str], patients: list[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Train/validation indices with no patient in both."""
    unique = sorted(set(patients))
    random.Random(seed).shuffle(unique)
    val_patients = set(unique[: max(1, round(len(unique) * fraction))]) if fraction > 0 else set()
    train = [i for i, p in enumerate(patients) if p not in val_patients]
    val = [i for i, p in enumerate(patients) if p in val_patients]
    return train, val


def read_patients(labels: Path, files: list[str]) -> list[str]:
    with open(labels, newline="") as f:
        rows = {(r.get("file") or r.get("Image Index")): r for r in csv.DictReader(f, delimiter="\t")}
    return [rows[name].get("patient_id") or rows[name].get("Patient ID") or name for name in files]


def youden_thresholds(truth: np.ndarray, score: np.ndarray) -> list[float]:
    """Per label, the threshold maximising sensitivity + specificity − 1 (0.5 when undefined)."""
    out = []
    for j in range(truth.shape[1]):
        t, s = truth[:, j], score[:, j]
        best, best_j = 0.5, -1.0
        if 0 < t.sum() < len(t):
            for cut in np.unique(s):
                pred = s >= cut
                j_stat = pred[t == 1].mean() + (~pred[t == 0]).mean() - 1
                if j_stat > best_j:
                    best, best_j = float(cut), j_stat
        out.append(best)
    return out


def predict(model, seg_model, loader, device, channels, mask_size) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    truth, score = [], []
    mean = torch.tensor(contract.IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(contract.IMAGENET_STD, device=device).view(1, 3, 1, 1)
    with torch.no_grad():
        for grey, labels in loader:
            grey = grey.to(device)
            masks = organ_masks_torch(seg_model(grey), channels, mask_size)
            probs, _ = model((grey.expand(-1, 3, -1, -1) - mean) / std, masks)
            truth.append(labels.numpy())
            score.append(probs.float().cpu().numpy())
    return np.concatenate(truth), np.concatenate(score)


def train_classifier(args) -> dict:
    """BCE on the 14 labels; masks from the frozen trained segmenter on the augmented image; the
    checkpoint with the best validation mean AUC is kept, with Youden thresholds from validation."""
    device = _device(args.device)
    seg_ckpt = torch.load(args.segmenter_checkpoint, map_location="cpu", weights_only=False)
    seg_config = segmenter.SegmenterConfig.from_dict(seg_ckpt["config"])
    seg_model = segmenter.UNet(seg_config)
    seg_model.load_state_dict(seg_ckpt["state_dict"])
    seg_model = seg_model.to(device).eval()
    base = anatomy_xnet.TINY if args.tiny else anatomy_xnet.FULL
    config = base
    if seg_config.input_size != config.input_size:
        raise ValueError(f"segmenter input {seg_config.input_size} differs from classifier input {config.input_size}")
    model = anatomy_xnet.AnatomyXNet(config)
    if args.backbone_weights:
        missing = model.load_backbone(torch.load(args.backbone_weights, map_location="cpu", weights_only=False))
        print(f"backbone loaded from {args.backbone_weights}; missing keys: {len(missing)}")
    model = model.to(device)
    files, truth = evaluate.read_labels(args.labels)
    train_idx, val_idx = split_by_patient(files, read_patients(args.labels, files), args.val_fraction, args.seed)
    size = config.input_size
    train_set = LabelledImages(args.images, [files[i] for i in train_idx], truth[train_idx], size)
    val_set = LabelledImages(args.images, [files[i] for i in val_idx], truth[val_idx], size)
    loader = DataLoader(train_set, batch_size=args.batch, shuffle=True, num_workers=args.workers, drop_last=len(train_set) > args.batch)
    val_loader = DataLoader(val_set, batch_size=args.batch, num_workers=args.workers)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.max_steps or args.epochs * len(loader)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(steps, 1))
    mean = torch.tensor(contract.IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(contract.IMAGENET_STD, device=device).view(1, 3, 1, 1)
    amp = device.type == "cuda" and not args.no_amp
    best, history, step = None, [], 0
    eval_every = args.eval_every or len(loader)
    for grey, labels in _cycle(loader):
        if step >= steps:
            break
        model.train()
        grey, labels = grey.to(device), labels.to(device)
        (grey,) = random_affine(grey)
        with torch.no_grad():
            masks = organ_masks_torch(seg_model(grey), seg_config.channels, config.mask_size)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits, _ = model.logits((grey.expand(-1, 3, -1, -1) - mean) / std, masks)
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        step += 1
        if step % args.log_every == 0 or step == 1:
            print(f"classifier step {step}/{steps} loss {loss.item():.4f}", flush=True)
        if step % eval_every == 0 or step == steps:
            y, p = predict(model, seg_model, val_loader, device, seg_config.channels, config.mask_size)
            aucs = [evaluate.roc_auc(y[:, j], p[:, j]) for j in range(len(contract.LABELS))]
            valid = [a for a in aucs if not np.isnan(a)]
            mean_auc = float(np.mean(valid)) if valid else float("nan")
            history.append({"step": step, "loss": loss.item(), "val_mean_auc": mean_auc})
            print(f"classifier step {step}: validation mean AUC {mean_auc:.4f} over {len(valid)} labels", flush=True)
            if best is None or (not np.isnan(mean_auc) and (np.isnan(best["val_mean_auc"]) or mean_auc > best["val_mean_auc"])):
                best = {
                    "kind": "classifier",
                    "config": config.to_dict(),
                    "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                    "trained": True,
                    "model_version": _version(args.model_version),
                    "thresholds": youden_thresholds(y, p),
                    "val_mean_auc": mean_auc,
                    "val_aucs": dict(zip(contract.LABELS, aucs)),
                }
    if best is None:
        raise RuntimeError("no training step ran")
    best["history"] = history
    torch.save(best, args.out)
    print(f"wrote {args.out} (validation mean AUC {best['val_mean_auc']:.4f})")
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr_models.train", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--images", type=Path, required=True, help="image folder")
    common.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    common.add_argument("--tiny", action="store_true", help="the tiny test architecture (smoke tests)")
    common.add_argument("--epochs", type=int, default=10)
    common.add_argument("--max-steps", type=int, help="stop after this many steps (overrides --epochs)")
    common.add_argument("--batch", type=int, default=16)
    common.add_argument("--workers", type=int, default=8)
    common.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when present)")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--model-version", help="written to cxr.model_version (default 1.0.0-DATE)")
    common.add_argument("--log-every", type=int, default=50)
    seg = sub.add_parser("segmenter", parents=[common], help="semi-supervised segmenter (mean teacher)")
    seg.add_argument("--masks", type=Path, required=True, help="MASK_DIR/<channel>/<image name> annotations")
    seg.add_argument("--unlabelled", type=Path, help="unannotated images for the consistency loss")
    seg.add_argument("--size", type=int, help="input size (default 512, tiny 64)")
    seg.add_argument("--lr", type=float, default=1e-3)
    seg.add_argument("--ema", type=float, default=0.99, help="teacher EMA decay")
    seg.add_argument("--consistency", type=float, default=1.0, help="consistency loss weight")
    seg.add_argument("--rampup", type=int, default=2000, help="steps over which the consistency weight ramps up")
    cls = sub.add_parser("classifier", parents=[common], help="Anatomy-XNet on the 14 labels")
    cls.add_argument("--labels", type=Path, required=True, help="labels.tsv (see cxr_models.evaluate)")
    cls.add_argument("--segmenter-checkpoint", type=Path, required=True)
    cls.add_argument("--backbone-weights", type=Path, help="DenseNet-121 state dict (ImageNet or CheXNet)")
    cls.add_argument("--val-fraction", type=float, default=0.1, help="patients held out for validation")
    cls.add_argument("--eval-every", type=int, help="steps between validations (default: each epoch)")
    cls.add_argument("--lr", type=float, default=1e-4)
    cls.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on CUDA")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    if args.what == "segmenter":
        train_segmenter(args)
    else:
        train_classifier(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
