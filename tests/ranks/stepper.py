"""A minimal training loop that only reports progress: for fault-injection tests that
need a rank which steps forever (the runtime acts out injected faults in heartbeat())."""

import time

from agents.runtime import heartbeat

step = 0
while True:
    step += 1
    heartbeat(step)
    if step % 20 == 0:
        print(f"step {step}", flush=True)
    time.sleep(0.05)
