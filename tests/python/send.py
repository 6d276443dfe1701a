#!/usr/bin/env python3
"""A second DICOM implementation (pynetdicom) as a sender, for the receive tests.

send.py HOST PORT CALLED_AE [--aet AE] [--raw] [--assocs N] FILE...
Prints one JSON object per file and line: {"file", "sop", "status"} (status -1: not sent),
flushing after each, so a test can watch acknowledgements arrive. With --assocs N the files are
split over N concurrent associations (threads).
"""
import argparse
import json
import sys
import threading

from pydicom import dcmread
from pydicom.uid import UID
from pynetdicom import AE, StoragePresentationContexts, build_context
from pynetdicom.sop_class import Verification

lock = threading.Lock()


def emit(obj):
    with lock:
        print(json.dumps(obj), flush=True)


def send_all(args, files):
    ae = AE(ae_title=args.aet)
    ae.acse_timeout = 30
    ae.dimse_timeout = 20
    ae.network_timeout = 15
    contexts = {}
    for f in files:
        ds = dcmread(f, stop_before_pixels=True)
        key = (ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        contexts[key] = True
    for sop_class, ts in contexts:
        ae.add_requested_context(sop_class, [ts])
    assoc = ae.associate(args.host, args.port, ae_title=args.called)
    if not assoc.is_established:
        for f in files:
            emit({"file": f, "sop": None, "status": -1, "error": "association rejected or aborted"})
        return
    try:
        for f in files:
            ds = dcmread(f, stop_before_pixels=True)
            try:
                # a path is sent as-is: the data set bytes exactly as in the file
                rsp = assoc.send_c_store(f)
                status = int(rsp.Status) if rsp and "Status" in rsp else -1
                comment = str(rsp.get("ErrorComment", "")) if rsp else ""
            except Exception as e:  # noqa: BLE001 - report and continue
                status, comment = -1, repr(e)
            emit({"file": f, "sop": str(ds.SOPInstanceUID), "status": status, "comment": comment})
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("called")
    p.add_argument("--aet", default="PYNETDICOM")
    p.add_argument("--assocs", type=int, default=1)
    p.add_argument("files", nargs="+")
    args = p.parse_args()
    groups = [args.files[i :: args.assocs] for i in range(args.assocs)]
    threads = [threading.Thread(target=send_all, args=(args, g)) for g in groups if g]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    sys.exit(main())
