"""One persistent XLA compilation cache for the whole test session (fresh each session, removed at its end).

The suite compiles the same programs many times over: every ``simdl.simulate`` call of a task compiles the same
evaluation program again, models are initialised op by op (one small program per op) in every process, and the
xdist workers and the subprocesses the tests start (CLI, checkpoint, benchmark children) repeat each other's
compilations. A cache hit returns the executable XLA would build again, so the results are the same, only faster;
simdl's own compile counters (``info["compiles"]``) count programs, not XLA invocations, and are unaffected.

The xdist controller creates the folder and exports it through the environment, so the workers and every
subprocess (which inherit ``os.environ``) share it. A run that sets ``JAX_COMPILATION_CACHE_DIR`` itself keeps its
own folder.
"""

import os
import shutil
import tempfile

_ENV = "JAX_COMPILATION_CACHE_DIR"
_CREATED = None  # the folder this process made (and removes at the end); None in the workers and subprocesses

if _ENV not in os.environ:  # the first process of the session (controller, or plain pytest without xdist)
    _CREATED = os.environ[_ENV] = tempfile.mkdtemp(prefix="simdl-tests-jax-cache-")
# cache every compilation (the op-by-op initialisation programs take well under the default 1 s each)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402  (after the environment: jax reads it at import)

jax.config.update("jax_compilation_cache_dir", os.environ[_ENV])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                  int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))


def pytest_unconfigure(config):
    if _CREATED is not None:
        shutil.rmtree(_CREATED, ignore_errors=True)
