import os
import sys

# The kernels run through Triton's CPU interpreter in tests; it must be on before any
# kernel module is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(__file__))
