"""Say goodbye on mDNS in another node's name, as any host of the LAN can.

python tests/lan/scripts/mdns_goodbye.py ADDRESS INSTANCE [COUNT]

Sends COUNT (default 5) DNS-SD goodbyes, a second apart, from ADDRESS: the service's PTR record for
INSTANCE (the full instance name, `NAME (ID8)._inferhub._tcp.local.`) with a time to live of 0, which
tells every listener the service has gone. Prints `sent N` after each.
"""

from __future__ import annotations

import sys
import time

from zeroconf import DNSOutgoing, DNSPointer, Zeroconf
from zeroconf.const import _CLASS_IN, _FLAGS_AA, _FLAGS_QR_RESPONSE, _TYPE_PTR

from inferhub_desktop.core.peers import SERVICE_TYPE


def main() -> None:
    address, instance = sys.argv[1:3]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    zc = Zeroconf(interfaces=[address])
    try:
        for n in range(1, count + 1):
            out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
            out.add_answer_at_time(DNSPointer(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN, 0, instance), 0)
            zc.send(out)
            print(f"sent {n}", flush=True)
            time.sleep(1.0)
    finally:
        zc.close()


if __name__ == "__main__":
    main()
