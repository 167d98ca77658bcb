"""The sys_enter variant of bench_exec.py: syscalls/sys_enter_lseek, same rows.

sudo .venv/bin/python benchmarks/bench_sys_enter.py [bench_exec.py's options]
"""

from __future__ import annotations

import sys

from bench_exec import main

if __name__ == "__main__":
    sys.exit(main(["--hook", "lseek", *sys.argv[1:]]))
