"""README.md's code blocks run.

* The ```python blocks are executed in order, in one namespace, in a temporary working directory. One explicit
  substitution keeps the test short: the API tour's ``simulate(..., steps=1000, ..., eval_every=100)`` runs as
  ``steps=100, ..., eval_every=50`` (table ``SUBSTITUTIONS``; every entry must match the README exactly once, so a
  changed README fails here rather than silently running the long version). Nothing else is changed.
* The ```bash blocks' ``simdl`` commands are parsed by the command's own argument parser (``simdl.cli.build_parser``);
  ``simdl list``, every ``--help`` line and ``simdl sweep ... --dry-run`` of the README's sweep are run for real
  (no training); ``make`` lines name targets the Makefile defines.
"""

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")

# (README text, what the test runs instead): the only changes made to the README's Python code.
SUBSTITUTIONS = [
    ("steps=1000, batch_size=32, seed=0, eval_every=100", "steps=100, batch_size=32, seed=0, eval_every=50"),
]


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README, flags=re.S | re.M)


def commands(prefix: str) -> list[list[str]]:
    """Command lines of the bash blocks that start with ``prefix``, comments stripped, split like a shell."""
    out = []
    for block in blocks("bash"):
        for line in block.splitlines():
            argv = shlex.split(line, comments=True)
            if argv and argv[0] == prefix:
                out.append(argv)
    return out


def test_readme_has_code_blocks():
    assert blocks("python") and blocks("bash")
    assert commands("simdl")


def test_python_blocks_run(tmp_path, monkeypatch):
    code = blocks("python")
    for old, new in SUBSTITUTIONS:
        hits = sum(b.count(old) for b in code)
        assert hits == 1, f"substitution {old!r} matches the README {hits} times"
        code = [b.replace(old, new) for b in code]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    ns: dict = {"__name__": "__readme__"}
    for i, block in enumerate(code):
        exec(compile(block, f"README.md python block {i}", "exec"), ns)
    # What the tour's comments state.
    import jax

    assert ns["topo"].weights.shape == (16, 16)
    assert round(float(ns["topo"].spectral_gap), 4) == 0.0507
    hist = ns["result"].history
    for key in ("avg_model_accuracy", "worker_accuracy_min", "consensus_distance", "bytes_per_worker"):
        assert len(hist[key]) >= 1, key
    assert all(leaf.shape[0] == 16 for leaf in jax.tree_util.tree_leaves(ns["result"].params))


def test_simdl_commands_parse():
    from simdl.cli import build_parser

    for argv in commands("simdl"):
        if "--help" in argv:
            continue  # run for real below
        try:
            build_parser().parse_args(argv[1:])
        except SystemExit as e:  # argparse reports a bad command line by exiting
            pytest.fail(f"README command does not parse: {shlex.join(argv)} (exit {e.code})")


def test_make_targets_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    for argv in commands("make"):
        assert set(argv[1:]) <= targets, argv


def _simdl(args: list[str], capsys) -> tuple[int, str, str]:
    """``simdl ARGS`` in this process (``simdl.cli.main``, what the command runs): exit code, stdout, stderr."""
    from simdl.cli import main

    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as e:  # --help
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def test_simdl_commands_run(tmp_path, monkeypatch, capsys):
    """``simdl list``, the ``--help`` lines, and the sweep line as a dry run (checking its "N runs in M programs")."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    cmds = commands("simdl")
    to_run = [argv for argv in cmds if "--help" in argv or argv[1:] == ["list"]]
    assert ["simdl", "list"] in to_run and ["simdl", "run", "--help"] in to_run
    for argv in to_run:
        code, out, err = _simdl(argv[1:], capsys)
        assert code == 0, (argv, err)
        assert out.strip(), argv
    sweeps = [argv for argv in cmds if argv[1] == "sweep"]
    claim = re.search(r"simdl sweep .*# (\d+) runs in (\d+) compiled programs", README)
    assert sweeps and claim, "the README's sweep line no longer says how many runs and programs"
    for argv in sweeps:
        code, out, err = _simdl([*argv[1:], "--dry-run"], capsys)
        assert code == 0, (argv, err)
        assert f"{claim[1]} runs in {claim[2]} compile groups" in out, out
