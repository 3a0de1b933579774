"""bench/encode_instructions.py: its workload runs (without valgrind) and its reader of
callgrind_annotate's lines adds instructions up per library."""

from __future__ import annotations

from bench.encode_instructions import by_library, workload

ANNOTATED = """\
--------------------------------------------------------------------------------
11,667,725,835 (100.0%)  PROGRAM TOTALS
--------------------------------------------------------------------------------
1,260,437,558 (10.80%)  ???:0x0000000000022580 [/v/site-packages/av.libs/libopus-114e2b1a.so.0.11.1]
  552,445,584 ( 4.73%)  ???:0x0000000000039d20 [/v/site-packages/av.libs/libopus-114e2b1a.so.0.11.1]
  417,482,077 ( 3.58%)  /b/Python/ceval.c:_PyEval_EvalFrameDefault'2 [/r/lib/libpython3.11.so.1.0]
   67,657,848 ( 0.58%)  ???:mapiter [/n/_multiarray_umath.cpython-311-x86_64-linux-gnu.so]
"""


def test_instructions_add_up_per_library() -> None:
    counts = by_library(ANNOTATED)
    assert counts == {"libopus.so.0.11.1": 1_812_883_142, "libpython3.11.so.1.0": 417_482_077,
                      "_multiarray_umath.so": 67_657_848}


def test_each_mode_of_the_workload_runs() -> None:
    for mode in ("setup", "live", "floor"):
        workload(mode, 1, 1.0, 0.5)
