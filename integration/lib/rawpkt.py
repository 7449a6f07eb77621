#!/usr/bin/env python3
"""Raw Ethernet frames in and out of one interface of the netns this runs in (via nsenter), for the
attack tests: frames are built by the test (integration/lib/raw.ts) and sent as they are; the sniffer
prints every frame it sees as hex, one per line, until its time is up.

  rawpkt.py send IFACE HEX [HEX ...]     send each frame once, in order
  rawpkt.py sniff IFACE SECONDS          print "ready", then "<direction> <hex>" per frame; "done" at the end
  rawpkt.py send-gso IFACE MSS HEX       send one IPv4 TCP frame as a GSO packet of segments of MSS bytes
                                         (a virtio-net header: the kernel segments it, or a device that can)
"""
import select
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003


def send(iface, frames):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    for f in frames:
        s.send(bytes.fromhex(f))
        time.sleep(0.002)  # keep fragments in order on a busy machine
    s.close()


def send_gso(iface, mss, frame):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.setsockopt(263, 15, 1)  # SOL_PACKET, PACKET_VNET_HDR: a struct virtio_net_hdr before each frame
    s.bind((iface, 0))
    f = bytes.fromhex(frame)
    l4 = 14 + (f[14] & 0xF) * 4
    # flags NEEDS_CSUM (the TCP checksum field holds the pseudo-header sum), gso_type TCPV4, header
    # length, gso_size, csum_start (the TCP header), csum_offset (its checksum field); little endian
    s.send(struct.pack("<BBHHHH", 1, 1, l4 + (f[l4 + 12] >> 4) * 4, mss, l4, 16) + f)
    s.close()


def sniff(iface, seconds):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
    s.setblocking(False)
    print("ready", flush=True)
    end = time.time() + seconds
    seen = 0
    while time.time() < end and seen < 5000:
        r, _, _ = select.select([s], [], [], max(0.0, end - time.time()))
        if not r:
            continue
        data, addr = s.recvfrom(65535)
        # addr[2]: PACKET_HOST 0, BROADCAST 1, MULTICAST 2, OTHERHOST 3, OUTGOING 4
        print(("out" if addr[2] == 4 else "in") + " " + data.hex(), flush=True)
        seen += 1
    print("done", flush=True)


if __name__ == "__main__":
    cmd, iface = sys.argv[1], sys.argv[2]
    if cmd == "send":
        send(iface, sys.argv[3:])
    elif cmd == "send-gso":
        send_gso(iface, int(sys.argv[3]), sys.argv[4])
    elif cmd == "sniff":
        sniff(iface, float(sys.argv[3]))
    else:
        sys.exit("usage: rawpkt.py send IFACE HEX... | sniff IFACE SECONDS | send-gso IFACE MSS HEX")
