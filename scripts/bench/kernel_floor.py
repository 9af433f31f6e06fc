"""The floor under the execute round trip: ipykernel alone, no hub and no user server.

    sudo /opt/minihub/venv/bin/python scripts/bench/kernel_floor.py [--rounds 300]

jupyter_client talks straight to a new ipykernel and times `1+1` until both the
execute_reply and the kernel's return to idle have arrived, as scripts/bench/run.py does
through each hub. Compare with scripts/bench_proxy.py --mode real (BENCH_KERNEL_MSG=execute),
which times the same round trip direct to a minihub user server and through the hub.
"""

from __future__ import annotations

import argparse
import statistics
import time

from jupyter_client.manager import start_new_kernel


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=300)
    rounds = min(ap.parse_args().rounds, 2000)
    km, kc = start_new_kernel(kernel_name="python3")
    lat = []
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            msg_id = kc.execute("1+1")
            while kc.get_shell_msg(timeout=10)["parent_header"].get("msg_id") != msg_id:
                pass
            while True:
                m = kc.get_iopub_msg(timeout=10)
                if (
                    m["parent_header"].get("msg_id") == msg_id
                    and m["msg_type"] == "status"
                    and m["content"]["execution_state"] == "idle"
                ):
                    break
            lat.append((time.perf_counter() - t0) * 1000)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    lat.sort()
    print(
        f"ipykernel alone, execute 1+1 until reply + idle, {len(lat)} rounds: "
        f"median {statistics.median(lat):.2f} ms, p99 {lat[int(len(lat) * 0.99) - 1]:.2f} ms"
    )


if __name__ == "__main__":
    main()
