"""Long runs checkpoint (orbax) and resume to results identical to an uninterrupted run, even after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import simdl

CHILD = textwrap.dedent("""
    import json, os, signal, sys
    import numpy as np
    import simdl
    mode, ckpt, out_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    task = simdl.tasks.classification("digits", "mlp", n_workers=4, partition="dirichlet", alpha=0.5, seed=0)
    alg = simdl.algorithms.dsgd(0.1, momentum=0.9, nesterov=True)

    def run(mode):
        def killer(step, row):
            if mode == "kill" and step == 30:
                os.kill(os.getpid(), signal.SIGKILL)   # dies between checkpoints (last one at step 20)

        res = simdl.simulate(task, alg, simdl.topologies.ring(4), steps=60, batch_size=8, eval_every=10, seed=5,
                             checkpoint_dir=ckpt if mode != "plain" else None,
                             checkpoint_every=20 if mode != "plain" else None, resume=(mode == "resume"),
                             callback=killer)
        x = np.concatenate([np.asarray(v).ravel() for v in __import__("jax").tree_util.tree_leaves(res.params)])
        json.dump({"x": x.tolist(), "history": {k: v.tolist() for k, v in res.history.items()}},
                  open(os.path.join(out_dir, mode + ".json"), "w"))

    # "kill": the uninterrupted run first (no checkpoints; one interpreter start less), then the run that dies
    for m in (["plain", "kill"] if mode == "kill" else [mode]):
        run(m)
""")


def _child(tmp_path, mode):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    p = subprocess.run([sys.executable, str(script), mode, str(tmp_path / "ckpt"), str(tmp_path)], capture_output=True,
                       text=True, timeout=600)
    return p, tmp_path / f"{mode}.json"


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    p, killed = _child(tmp_path, "kill")  # writes plain.json (uninterrupted run), then dies at step 30
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert not killed.exists()
    plain = tmp_path / "plain.json"
    steps = sorted(int(d) for d in os.listdir(tmp_path / "ckpt") if d.isdigit())
    assert steps and max(steps) == 20
    p, resumed = _child(tmp_path, "resume")  # a fresh interpreter
    assert p.returncode == 0, p.stderr[-2000:]
    a, b = json.loads(resumed.read_text()), json.loads(plain.read_text())
    np.testing.assert_array_equal(np.asarray(a["x"]), np.asarray(b["x"]))
    assert a["history"]["step"] == b["history"]["step"] == [10, 20, 30, 40, 50, 60]
    for k in b["history"]:
        np.testing.assert_allclose(a["history"][k], b["history"][k], rtol=1e-6, err_msg=k)


def test_resume_continues_a_shorter_run(tmp_path):
    task = simdl.tasks.random_quadratics(n_workers=4, dim=3, noise=0.1, seed=0)
    alg = simdl.algorithms.dsgd(0.2, momentum=0.5)
    topo = simdl.topologies.ring(4)
    simdl.simulate(task, alg, topo, steps=20, eval_every=10, checkpoint_dir=tmp_path)
    resumed = simdl.simulate(task, alg, topo, steps=40, eval_every=10, checkpoint_dir=tmp_path, resume=True)
    full = simdl.simulate(task, alg, topo, steps=40, eval_every=10)
    np.testing.assert_array_equal(np.asarray(resumed.params["x"]), np.asarray(full.params["x"]))
    np.testing.assert_allclose(resumed.history["suboptimality"], full.history["suboptimality"], rtol=1e-6)
    assert resumed.info["compiles"] == 1


def test_checkpoint_arguments_are_validated(tmp_path):
    task = simdl.tasks.random_quadratics(n_workers=4, dim=3)
    kw = dict(steps=20, eval_every=10)
    with pytest.raises(ValueError, match="multiple of eval_every"):
        simdl.simulate(task, simdl.algorithms.dsgd(0.1), simdl.topologies.ring(4), checkpoint_dir=tmp_path,
                       checkpoint_every=15, **kw)
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        simdl.simulate(task, simdl.algorithms.dsgd(0.1), simdl.topologies.ring(4), resume=True, **kw)


def test_resuming_a_different_config_is_refused_naming_the_difference(tmp_path):
    task = simdl.tasks.random_quadratics(n_workers=4, dim=3, seed=0)
    topo = simdl.topologies.ring(4)
    simdl.simulate(task, simdl.algorithms.dsgd(0.1), topo, steps=20, eval_every=10, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"holds a different run.*algorithm\.learning_rate: 0\.1 != 0\.2"):
        simdl.simulate(task, simdl.algorithms.dsgd(0.2), topo, steps=40, eval_every=10, checkpoint_dir=tmp_path,
                       resume=True)
    with pytest.raises(ValueError, match=r"seed: 0 != 1"):
        simdl.simulate(task, simdl.algorithms.dsgd(0.1), topo, steps=40, eval_every=10, seed=1,
                       checkpoint_dir=tmp_path, resume=True)
    more = simdl.simulate(task, simdl.algorithms.dsgd(0.1), topo, steps=40, eval_every=10, checkpoint_dir=tmp_path,
                          resume=True)  # the same run, going further: accepted
    assert more.history["step"][-1] == 40
