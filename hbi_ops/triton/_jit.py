"""Helpers for @triton.jit code that must also run fast in Triton's interpreter.

The interpreter (TRITON_INTERPRET=1, CPU tests) re-patches the language on every call of a nested
@triton.jit function (~2 ms each): there `helper` leaves functions as plain Python, run inline with the
interpreter's tl (the same code; compiled, they are @triton.jit as usual). tl.sum / max / min are @jit
functions too: under the interpreter `sum_`, `max_` and `min_` call its reduction directly.
"""

import os

import triton
import triton.language as tl

INTERPRETING = os.environ.get("TRITON_INTERPRET", "") == "1"
helper = (lambda fn: fn) if INTERPRETING else triton.jit

if INTERPRETING:

    def sum_(x, axis):
        return tl.reduce(x, axis, tl.standard._sum_combine)

    def max_(x, axis):
        return tl.reduce(x, axis, tl.standard._elementwise_max)

    def min_(x, axis):
        return tl.reduce(x, axis, tl.standard._elementwise_min)
else:
    sum_, max_, min_ = tl.sum, tl.max, tl.min
