#!/usr/bin/env python3
"""Make real-size DX test instances for the receive benchmark from real chest pixel data.

Sources (tests/fixtures): RG1_UNCR (chest CR, 1955x1841, 15 bits stored), 966_fixed (chest DX,
2128x2000, 12 bits, JPEG 2000 lossless) and the 12 NIH ChestX-ray14 PNGs (1024x1024, 8 bits).
Each is resampled (bilinear) to fit 2048x2048, padded to 2048x2048 with its darkest value and
written, Explicit VR Little Endian, as Digital X-Ray Image Storage - For Presentation
(16 bits allocated, 12/14/15 stored), each instance with its own Study/Series/SOP Instance UIDs.
About 8 MiB per file. Usage: make-dx.py OUT_DIR COUNT. Existing files are kept (reruns reuse them).
"""

import sys
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
SIZE = 2048
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def fit(img: np.ndarray, bits: int, invert: bool) -> np.ndarray:
    """Resample a grey image to fit SIZE x SIZE, pad, rescale to `bits`, MONOCHROME2."""
    img = img.astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / max(hi - lo, 1.0)
    if invert:  # MONOCHROME1 -> MONOCHROME2
        img = 1.0 - img
    h, w = img.shape
    scale = SIZE / max(h, w)
    nh, nw = min(SIZE, round(h * scale)), min(SIZE, round(w * scale))
    img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    out = np.zeros((SIZE, SIZE), np.float32)
    y, x = (SIZE - nh) // 2, (SIZE - nw) // 2
    out[y : y + nh, x : x + nw] = np.clip(img, 0.0, 1.0)
    return np.round(out * ((1 << bits) - 1)).astype(np.uint16)


def sources() -> list[tuple[str, np.ndarray, int]]:
    srcs = []
    d = pydicom.dcmread(FIX / "dicom" / "RG1_UNCR.dcm")
    srcs.append(("RG1_UNCR", fit(d.pixel_array, 15, d.PhotometricInterpretation == "MONOCHROME1"), 15))
    d = pydicom.dcmread(FIX / "dicom" / "966_fixed.dcm")
    srcs.append(("966_fixed", fit(d.pixel_array, 12, d.PhotometricInterpretation == "MONOCHROME1"), 12))
    for png in sorted((FIX / "nih").glob("*.png")):
        a = np.asarray(Image.open(png).convert("L"))
        srcs.append((png.stem, fit(a, 14, False), 14))
    return srcs


def instance(i: int, name: str, pixels: np.ndarray, bits: int) -> pydicom.FileDataset:
    sop = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX_PRESENTATION
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20250101"
    ds.StudyTime = ds.ContentTime = "120000"
    ds.AccessionNumber = f"BENCH{i:05d}"
    ds.StudyID = str(i)
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.StudyDescription = "Receive benchmark (synthetic header, real chest pixels)"
    ds.PatientName = "BENCH^SYNTHETIC"
    ds.PatientID = f"BENCH{i:05d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "cxr-worker receive benchmark"
    ds.DerivationDescription = f"resampled to {SIZE}x{SIZE} from {name}"
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "U"
    region = Dataset()
    region.CodeValue = "51185008"
    region.CodingSchemeDesignator = "SCT"
    region.CodeMeaning = "Chest"
    ds.AnatomicRegionSequence = [region]
    ds.DetectorType = ""
    ds.PositionerType = ""
    ds.AcquisitionContextSequence = []
    ds.PresentationLUTShape = "IDENTITY"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.ImagerPixelSpacing = ["0.175", "0.175"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = SIZE
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.WindowCenter = str(1 << (bits - 1))
    ds.WindowWidth = str(1 << bits)
    # a per-instance shift keeps every pixel payload distinct
    ds.PixelData = np.roll(pixels, i, axis=1).tobytes()
    fds = pydicom.FileDataset(None, ds, file_meta=meta, preamble=b"\0" * 128)
    return fds


def main() -> None:
    out, count = Path(sys.argv[1]), int(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(count) if not (out / f"dx{i:04d}.dcm").exists()]
    if not todo:
        return
    srcs = sources()
    for i in todo:
        name, pixels, bits = srcs[i % len(srcs)]
        tmp = out / f"dx{i:04d}.dcm.tmp"
        instance(i, name, pixels, bits).save_as(tmp, enforce_file_format=True)
        tmp.rename(out / f"dx{i:04d}.dcm")
    print(f"made {len(todo)} instances in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
