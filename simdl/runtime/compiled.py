"""The compiled chunk program: lowered and compiled ahead of time, once per chunk length, with the compile count and
compile time kept by the object itself (no side channel inside the traced function)."""

from __future__ import annotations

import time
from collections.abc import Callable

import jax


class CompiledChunks:
    """The chunk program compiled ahead of time, once per chunk length.

    ``programs(*args, length)`` runs ``fn(*args, length)`` (``length``: the static last argument; the first argument,
    the state, is donated). A length seen for the first time is lowered and compiled explicitly, so
    :attr:`compiles` (distinct programs) and :attr:`compile_time_s` (seconds spent in XLA compilation only) are
    counted here rather than by side effects inside the traced function.
    """

    def __init__(self, fn: Callable, **jit_kwargs):
        n_args = fn.__code__.co_argcount
        self._jit = jax.jit(fn, static_argnums=(n_args - 1,), donate_argnums=(0,), **jit_kwargs)
        self._programs: dict = {}
        self.compile_time_s = 0.0

    @property
    def compiles(self) -> int:
        return len(self._programs)

    def __call__(self, *args):
        *dynamic, length = args
        program = self._programs.get(length)
        if program is None:
            t0 = time.perf_counter()
            program = self._jit.lower(*args).compile()
            self.compile_time_s += time.perf_counter() - t0
            self._programs[length] = program
        return program(*dynamic)
