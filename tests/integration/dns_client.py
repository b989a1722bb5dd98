"""A DNS client the tests run inside a task's namespace (`ip netns exec NS python
dns_client.py NAME [TYPE] [--tcp]`): asks 127.0.0.11:53 once and prints what came back
as JSON (rcode, flags, the addresses answered, whether the answer's ID is the query's)."""

from __future__ import annotations

import json
import sys

from dnslib import QTYPE, RCODE, DNSRecord

SERVER = "127.0.0.11"
TIMEOUT_S = 20


def main(argv: list[str]) -> None:
    tcp = "--tcp" in argv
    args = [a for a in argv if a != "--tcp"]
    name, qtype = args[0], (args[1] if len(args) > 1 else "A")
    query = DNSRecord.question(name, qtype)
    raw = query.send(SERVER, 53, tcp=tcp, timeout=TIMEOUT_S)
    reply = DNSRecord.parse(raw)
    print(
        json.dumps(
            {
                "rcode": RCODE[reply.header.rcode],
                "aa": bool(reply.header.aa),
                "ad": bool(reply.header.ad),
                "tc": bool(reply.header.tc),
                "id_matches": reply.header.id == query.header.id,
                "answers": [str(rr.rdata) for rr in reply.rr if rr.rtype in (QTYPE.A, QTYPE.AAAA)],
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
