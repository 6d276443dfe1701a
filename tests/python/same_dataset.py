#!/usr/bin/env python3
"""Exit 0 when two DICOM files hold the same data set, whatever their file meta and transfer
syntax: every element equal, pixel data compared decoded (a sender may convert big endian to
little endian). Prints the differing tags otherwise. same_dataset.py A B"""
import sys

import numpy as np
from pydicom import dcmread

a, b = (dcmread(p) for p in sys.argv[1:3])
# group lengths are optional and senders may drop them (PS3.5 7.2); Data Set Trailing Padding
# (FFFC,FFFC) has no meaning (PS3.10 7.2); pixel data is compared decoded below
skip = lambda t: t.element == 0 or t == 0xFFFCFFFC or t == 0x7FE00010
strip = lambda ds: {e.tag: e.value for e in ds if not skip(e.tag)}
ea, eb = strip(a), strip(b)
diff = sorted(set(ea) ^ set(eb)) + [t for t in ea if t in eb and ea[t] != eb[t]]
if ("PixelData" in a) != ("PixelData" in b):
    diff.append("PixelData presence")
elif "PixelData" in a and not np.array_equal(a.pixel_array, b.pixel_array):
    diff.append("PixelData (decoded)")
if diff:
    print("differ:", [str(t) for t in diff])
    sys.exit(1)
