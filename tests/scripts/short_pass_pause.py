"""Shorten datasets' pause at the end of every pass over parquet shards, for the test processes that read streams.

datasets sleeps ``SLEEP_TIME_ON_THREADS_SHUTDOWN`` (5 s) when a pass over parquet shards ends, so that Arrow's reader
threads are gone if the program exits right after (apache/arrow#39862, where 0.1 s is reported to be enough). A test
run reads many short passes (40 rows) in processes that live on after each of them: there the pause only costs
time. Imported by the test scripts that read streams, and usable as ``python tests/scripts/short_pass_pause.py
SCRIPT ARGS...`` to run SCRIPT (e.g. recipes/distill.py) with the short pause.
"""

import runpy
import sys

import datasets

PAUSE_S = 0.1
datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = PAUSE_S

if __name__ == "__main__":
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
