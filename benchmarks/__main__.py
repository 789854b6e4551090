import os

# The pure envelope here; the cases that report the compiled one time it in a child process
# (benchmarks/compiled.py).
os.environ.setdefault("STREAMKIT_NO_COMPILED", "1")

from benchmarks.cli import main

raise SystemExit(main())
