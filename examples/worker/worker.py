"""A background worker with no route: prints a line every second."""

import os
import time

beat = 0
while True:
    beat += 1
    print(f"worker {os.environ.get('FOUNDRY_INSTANCE_INDEX', '?')} tick {beat}", flush=True)
    time.sleep(1)
