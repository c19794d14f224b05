"""Following a job on the command line (`generate --wait`, `train --wait`): its progress, as it changes."""

import sys
import time
from collections.abc import Callable

FINAL = {"done", "failed", "cancelled"}


def job_follow(command, job, *, line: Callable[[object], str]) -> None:
    """Reprint the job's progress line whenever it changes, until the job ends.

    It only reads: a stuck job is failed by beat's sweep, never by whoever waits.
    """
    tty = sys.stdout.isatty()
    last, waited = None, time.monotonic()
    while True:
        job.refresh_from_db()
        text = line(job)
        if text != last:
            command.stdout.write(("\r" + text) if tty else text, ending="" if tty else "\n")
            command.stdout.flush()
            last = text
        if job.status in FINAL:
            break
        if job.status == "queued" and time.monotonic() - waited > 30:
            command.stderr.write("\nStill queued: is a worker consuming the gpu queue? (see /healthz)")
            waited = float("inf")
        time.sleep(0.5)
    if tty:
        command.stdout.write("")
