#!/usr/bin/env python3
"""Hand-made upper-layer PDUs for the receive tests: an A-ASSOCIATE-RQ built byte by byte, then
(1) a P-DATA-TF whose item length runs past the PDU, and (2) a P-DATA-TF cut off mid-PDU.
Exits 0 when the daemon answered each by closing (or aborting) that association.

garbage.py HOST PORT CALLED_AE
"""
import socket
import struct
import sys

CR = b"1.2.840.10008.5.1.4.1.1.1"
EXPLICIT = b"1.2.840.10008.1.2.1"


def item(kind, payload):
    return struct.pack(">BBH", kind, 0, len(payload)) + payload


def associate_rq(called, calling):
    pc = item(0x20, bytes([1, 0, 0, 0]) + item(0x30, CR) + item(0x40, EXPLICIT))
    user = item(0x50, item(0x51, struct.pack(">I", 16384)))
    body = (
        struct.pack(">HH", 1, 0)
        + called.ljust(16).encode()
        + calling.ljust(16).encode()
        + bytes(32)
        + item(0x10, b"1.2.840.10008.3.1.1.1")
        + pc
        + user
    )
    return struct.pack(">BBI", 1, 0, len(body)) + body


def read_all(s):
    data = b""
    s.settimeout(30)
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    return data


def connect_and_associate(host, port, called):
    s = socket.create_connection((host, port), timeout=30)
    s.sendall(associate_rq(called, "GARBAGE"))
    head = s.recv(6)
    assert head[0] == 0x02, f"expected A-ASSOCIATE-AC, got PDU type {head[0]:#x}"
    (length,) = struct.unpack(">I", head[2:6])
    while length:
        length -= len(s.recv(length))
    return s


def main():
    host, port, called = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    # (1) item length far beyond the PDU
    s = connect_and_associate(host, port, called)
    pdu_body = struct.pack(">I", 0xFFFFFFF0) + bytes([1, 0x03]) + b"\x00" * 8
    s.sendall(struct.pack(">BBI", 4, 0, len(pdu_body)) + pdu_body)
    rest = read_all(s)
    print("after bad item length:", rest[:1].hex() or "closed")
    s.close()
    # (2) a P-DATA-TF announced with 4000 bytes, of which 100 arrive, then the peer hangs up
    s = connect_and_associate(host, port, called)
    s.sendall(struct.pack(">BBI", 4, 0, 4000) + b"\x00" * 100)
    s.shutdown(socket.SHUT_WR)
    rest = read_all(s)
    print("after truncated PDU:", rest[:1].hex() or "closed")
    s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
