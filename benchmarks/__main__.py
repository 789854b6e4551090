import os
import sys

if not os.environ.get("STREAMKIT_NO_COMPILED"):
    # The harness itself runs with the pure envelope; the cases that report the compiled one
    # time it in a child process (benchmarks/compiled.py). Importing this package may already
    # have loaded the compiled one, so start again without it.
    env = dict(os.environ, STREAMKIT_NO_COMPILED="1")
    os.execve(sys.executable, [sys.executable, "-m", "benchmarks", *sys.argv[1:]], env)

from benchmarks.cli import main

raise SystemExit(main())
