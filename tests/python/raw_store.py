#!/usr/bin/env python3
"""Send one C-STORE built from pynetdicom's DIMSE primitives, with data set bytes we choose:
  --mismatch      the command's Affected SOP Instance UID differs from the data set's
  --truncate N    only the first N bytes of the file's data set are sent (cut mid-element)
Prints status=0x....

raw_store.py HOST PORT CALLED_AE FILE (--mismatch | --truncate N)
"""
import argparse
import sys
from io import BytesIO

from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE


def dataset_bytes(path):
    raw = open(path, "rb").read()
    assert raw[128:132] == b"DICM"
    group_len = int.from_bytes(raw[140:144], "little")
    return raw[144 + group_len :]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("called")
    p.add_argument("file")
    p.add_argument("--mismatch", action="store_true")
    p.add_argument("--truncate", type=int)
    a = p.parse_args()
    ds = dcmread(a.file, stop_before_pixels=True)
    ae = AE(ae_title="RAWSTORE")
    ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    assoc = ae.associate(a.host, a.port, ae_title=a.called)
    assert assoc.is_established
    ctx = assoc.accepted_contexts[0]
    data = dataset_bytes(a.file)
    if a.truncate is not None:
        data = data[: a.truncate]
    req = C_STORE()
    req.MessageID = 1
    req.AffectedSOPClassUID = ds.SOPClassUID
    req.AffectedSOPInstanceUID = "1.2.3.4.5.6.7.8.9" if a.mismatch else ds.SOPInstanceUID
    req.Priority = 2
    req.DataSet = BytesIO(data)
    # as pynetdicom's own send_c_store does: pause the reactor so that it does not take the
    # response for an unsolicited message
    assoc._reactor_checkpoint.clear()
    assoc.dimse.send_msg(req, ctx.context_id)
    _, rsp = assoc.dimse.get_msg(block=True)
    assoc._reactor_checkpoint.set()
    if rsp is None:
        print("no response")
        return 1
    print(f"status={rsp.Status:#06x}")
    assoc.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
