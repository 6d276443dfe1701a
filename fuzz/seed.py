#!/usr/bin/env python3
"""Seed corpora for the fuzz targets, made from the project's real test fixtures.

    .venv/bin/python fuzz/seed.py        (writes fuzz/corpus/<target>/, replacing its seeds)

Decoder seeds are real codestreams: crops of the fixtures' images (64x64 and 256x256, so that a
run stays fast) re-encoded by DCMTK (dcmcrle, dcmcjpeg, dcmcjpls) and pylibjpeg-openjpeg, plus the
small fixtures' own first fragments; each seed is the target's input layout (rows, columns, bits,
samples, fragment). The other targets get real PDUs, command sets, data sets and configuration
files.
"""
import io
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom.encaps import generate_frames
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
)

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests/fixtures/dicom"
OUT = ROOT / "fuzz/corpus"
SEEDS = {}


def seed(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def dataset_bytes(path):
    raw = Path(path).read_bytes()
    ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
    # the data set starts after the file meta group
    group_len = int.from_bytes(raw[140:144], "little")
    return raw[144 + group_len :]


def crop(src, size, dst, bits8=False):
    ds = pydicom.dcmread(src)
    arr = ds.pixel_array
    r0, c0 = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    arr = np.ascontiguousarray(arr[r0 : r0 + size, c0 : c0 + size])
    if bits8:
        arr = (arr >> max(0, int(ds.BitsStored) - 8)).astype(np.uint8)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.Rows, ds.Columns = size, size
    ds.PixelData = arr.tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(dst, enforce_file_format=True)
    return ds


def first_fragment(path):
    ds = pydicom.dcmread(path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    return ds, frame


def image_seed(target, name, path):
    ds, frag = first_fragment(path)
    head = struct.pack(
        "<HHBB",
        int(ds.Rows) - 1,
        int(ds.Columns) - 1,
        int(ds.BitsStored) - 1,
        1 if int(ds.SamplesPerPixel) == 3 else 0,
    )
    seed(target, name, head + frag)


def run(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    tmp = Path(tempfile.mkdtemp())
    for size in (64, 256):
        crop(FIX / "RG1_UNCR.dcm", size, tmp / f"chest{size}.dcm")
        crop(FIX / "siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm", size, tmp / f"siim{size}.dcm", bits8=True)
    for size in (64, 256):
        src, src8 = tmp / f"chest{size}.dcm", tmp / f"siim{size}.dcm"
        run("dcmcrle", str(src), str(tmp / f"rle{size}.dcm"))
        image_seed("rle", f"crop{size}", tmp / f"rle{size}.dcm")
        run("dcmcjpeg", "+eb", str(src8), str(tmp / f"jpy{size}.dcm"))
        image_seed("jpeg_baseline", f"crop{size}", tmp / f"jpy{size}.dcm")
        run("dcmcjpeg", "+e1", str(src), str(tmp / f"jpl{size}.dcm"))
        image_seed("jpeg_lossless", f"crop{size}", tmp / f"jpl{size}.dcm")
        run("dcmcjpls", "+el", str(src), str(tmp / f"jls{size}.dcm"))
        image_seed("jpeg_ls", f"crop{size}", tmp / f"jls{size}.dcm")
        run("dcmcjpls", "+en", str(src), str(tmp / f"jlsn{size}.dcm"))
        image_seed("jpeg_ls", f"near{size}", tmp / f"jlsn{size}.dcm")
        for uid, kind in ((JPEG2000Lossless, "lossless"), (JPEG2000, "lossy")):
            ds = pydicom.dcmread(src)
            kw = {} if uid == JPEG2000Lossless else {"j2k_cr": [20]}
            ds.compress(uid, **kw)
            ds.save_as(tmp / f"j2k{kind}{size}.dcm", enforce_file_format=True)
            image_seed("jpeg2000", f"{kind}{size}", tmp / f"j2k{kind}{size}.dcm")
    # the small fixtures as they are (real vendors' codestreams, broken ones included)
    image_seed("jpeg_baseline", "siim", FIX / "siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm")
    image_seed("jpeg2000", "rg3_j2ki", FIX / "RG3_J2KI.dcm")
    image_seed("jpeg_ls", "rg3_jlsn", FIX / "RG3_JLSN.dcm")

    # deflate: deflated data sets of the crops
    for size in (64, 256):
        raw = dataset_bytes(tmp / f"chest{size}.dcm")
        z = zlib.compressobj(9, zlib.DEFLATED, -15)
        seed("deflate", f"crop{size}", z.compress(raw) + z.flush())

    # dataset: a small image's data set in every syntax the target picks (first byte), streamed
    # in fragments of a few sizes (second byte)
    syntaxes = ["implicit", "explicit", "big", "deflated", "jpll"]
    ds = pydicom.dcmread(tmp / "chest64.dcm")
    for i, kind in enumerate(syntaxes):
        if kind == "implicit":
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            buf = io.BytesIO()
            ds.save_as(buf, implicit_vr=True, little_endian=True)
            data = buf.getvalue()
            data = data[data.index(b"DICM") + 4 :]
            data = data[12 + int.from_bytes(data[8:12], "little") :]
        elif kind == "explicit":
            data = dataset_bytes(tmp / "chest64.dcm")
        elif kind == "big":
            run("dcmconv", "+tb", str(tmp / "chest64.dcm"), str(tmp / "big.dcm"))
            data = dataset_bytes(tmp / "big.dcm")
        elif kind == "deflated":
            raw = dataset_bytes(tmp / "chest64.dcm")
            z = zlib.compressobj(9, zlib.DEFLATED, -15)
            data = z.compress(raw) + z.flush()
        else:
            data = dataset_bytes(tmp / "jpl64.dcm")
        for chunk in (1, 7, 255):
            seed("dataset", f"{kind}-{chunk}", bytes([i, chunk]) + data)

    # command sets and PDUs
    def el(e, value):
        return struct.pack("<HHI", 0, e, len(value)) + value

    def cmdset(*els):
        body = b"".join(els)
        return el(0, struct.pack("<I", len(body))) + body

    echo = cmdset(el(2, b"1.2.840.10008.1.1\0"), el(0x100, b"\x30\x00"), el(0x110, b"\x01\x00"), el(0x800, b"\x01\x01"))
    store = cmdset(
        el(2, b"1.2.840.10008.5.1.4.1.1.1\0"), el(0x100, b"\x01\x00"), el(0x110, b"\x07\x00"),
        el(0x700, b"\x00\x00"), el(0x800, b"\x00\x00"), el(0x1000, b"1.2.3.4\0"),
    )
    seed("command", "c-echo", echo)
    seed("command", "c-store", store)

    def item(t, payload):
        return bytes([t, 0]) + struct.pack(">H", len(payload)) + payload

    def pc(pid, abstract, tss):
        sub = item(0x30, abstract) + b"".join(item(0x40, t) for t in tss)
        return bytes([0x20, 0]) + struct.pack(">H", 4 + len(sub)) + bytes([pid, 0, 0, 0]) + sub

    user = item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.3.4") + item(0x55, b"FUZZ")
    body = (
        struct.pack(">HH", 1, 0) + b"CXR_WORKER".ljust(16) + b"MODALITY".ljust(16) + bytes(32)
        + item(0x10, b"1.2.840.10008.3.1.1.1")
        + pc(1, b"1.2.840.10008.1.1", [b"1.2.840.10008.1.2"])
        + pc(3, b"1.2.840.10008.5.1.4.1.1.1", [b"1.2.840.10008.1.2.1", b"1.2.840.10008.1.2.4.90"])
        + bytes([0x50, 0]) + struct.pack(">H", len(user)) + user
    )
    seed("pdu", "associate-rq", bytes([1, 0]) + struct.pack(">I", len(body)) + body)
    pdv = struct.pack(">I", len(echo) + 2) + bytes([1, 3]) + echo
    seed("pdu", "p-data-echo", bytes([4, 0]) + struct.pack(">I", len(pdv)) + pdv)
    seed("pdu", "release-rq", bytes([5, 0, 0, 0, 0, 4, 0, 0, 0, 0]))
    seed("pdu", "abort", bytes([7, 0, 0, 0, 0, 4, 0, 0, 0, 2]))

    seed("config", "example", (ROOT / "config/cxr-worker.toml").read_bytes())
    seed("config", "installed", (ROOT / "systemd/cxr-worker.toml.in").read_bytes())
    shutil.rmtree(tmp)
    for d in sorted(OUT.iterdir()):
        sizes = [f.stat().st_size for f in d.iterdir()]
        print(f"{d.name}: {len(sizes)} seeds, largest {max(sizes)} bytes")


if __name__ == "__main__":
    sys.exit(main())
