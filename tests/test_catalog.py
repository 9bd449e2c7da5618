"""The defaults table (simdl.catalog): generated from the factory signatures, printed by `simdl list`, and the copy
in docs/algorithms.md (plus the per-algorithm default tables there) must agree with the code."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from simdl.algorithms import ALGORITHMS
from simdl.catalog import COLUMNS, MISSING, REQUIRED, default_rows, format_markdown, format_text

DOCS = Path(__file__).resolve().parents[1] / "docs" / "algorithms.md"
START = "<!-- defaults-table:start"
END = "<!-- defaults-table:end -->"


@pytest.fixture(scope="module")
def rows():
    return {r["algorithm"]: r for r in default_rows()}


def _cell(value) -> str:
    return value if isinstance(value, str) else repr(value)


def test_every_registered_algorithm_has_one_row(rows):
    names = [r["algorithm"] for r in default_rows()]
    assert sorted(names) == names
    assert set(names) == set(ALGORITHMS)
    assert len(names) == len(ALGORITHMS)
    for r in rows.values():
        assert set(r) == {"algorithm", *COLUMNS}


def test_cells_are_the_signature_defaults(rows):
    for name, factory in ALGORITHMS.items():
        params = inspect.signature(factory).parameters
        row = rows[name]
        for col in COLUMNS[:-1]:
            if col not in params:
                assert row[col] == MISSING, (name, col)
            elif params[col].default is inspect.Parameter.empty:
                assert row[col] == REQUIRED, (name, col)
            elif params[col].default is None:
                assert row[col].endswith("(auto)") or row[col] == "None", (name, col)
            else:
                assert row[col] == _cell(params[col].default), (name, col)
        for item in [] if row["other"] == MISSING else row["other"].split(", "):
            key, value = item.split("=", 1)
            assert value == _cell(params[key].default), (name, key)


def test_examples_of_differing_defaults(rows):
    # RelaySGD resolves momentum=None / nesterov=None to the paper's local Nesterov 0.9; D-SGD is plain SGD
    assert rows["relaysgd"]["momentum"] == "0.9 (auto)"
    assert rows["relaysgd"]["nesterov"] == "True (auto)"
    assert rows["relaysgd"]["fill"] == "initial"
    assert ALGORITHMS["relaysgd"](learning_rate=0.1).hyperparams["momentum"] == 0.9
    assert rows["dsgd"]["momentum"] == "0.0" and rows["dsgd"]["nesterov"] == "False"
    assert rows["sgp"]["momentum"] == "0.9" and rows["sgp"]["nesterov"] == "True" and rows["sgp"]["rounds"] == "1"
    assert rows["qg_dsgdm"]["mu"] == "0.9" and "local_step=1" in rows["qg_dsgdm"]["other"]
    assert rows["qg_adam"]["variant"] == "v2" and rows["qg_adam"]["momentum"] == MISSING
    assert rows["relaysum_mix"]["alpha"] == "0.5" and rows["relaysum_mix"]["momentum"] == "0.0"
    assert rows["local_sgd"]["local_steps"] == "4"
    assert rows["cdsgd"]["learning_rate"] == "0.01" and rows["dsgd"]["learning_rate"] == REQUIRED


def test_prose_about_default_momentum_matches_code():
    """The lists under the table in docs/algorithms.md ("the local optimizers differ by default")."""
    plain = ("dsgd", "dpsgd", "allreduce", "local_sgd", "model_averaging_clr", "dynamic_averaging", "d2",
             "exact_diffusion", "gradient_tracking", "choco_sgd", "relaysum_mix")
    for name in plain:
        hp = ALGORITHMS[name](learning_rate=0.1).hyperparams
        assert hp["momentum"] == 0.0 and hp["nesterov"] is False, name
    for name, beta in (("relaysgd", 0.9), ("relaysum_grad", 0.9), ("sgp", 0.9), ("qg_dsgdm", 0.9),
                       ("cdmsgd", 0.95)):
        hp = ALGORITHMS[name](learning_rate=0.1).hyperparams
        assert hp["momentum"] == beta and hp["nesterov"] is True, name
    with_lr = {n for n, f in ALGORITHMS.items()
               if inspect.signature(f).parameters["learning_rate"].default is not inspect.Parameter.empty}
    assert with_lr == {"cdsgd", "cdmsgd", "model_averaging_clr"}
    assert all(inspect.signature(f).parameters["weight_decay"].default == 0.0 for f in ALGORITHMS.values())


def test_docs_table_is_the_generated_one():
    text = DOCS.read_text(encoding="utf-8")
    assert text.count(START) == 1 and text.count(END) == 1
    block = text.split(START, 1)[1].split("\n", 1)[1].split(END, 1)[0].strip()
    assert block == format_markdown(default_rows()), (
        "docs/algorithms.md's defaults table is out of date; regenerate it with "
        "python -c 'from simdl.catalog import *; print(format_markdown(default_rows()))'")


def _sections(text: str):
    """``{algorithm: [table rows]}`` of the per-algorithm '| hyperparameter | default |' tables."""
    out = {}
    for m in re.finditer(r"^#{2,3} (\w+)\n(.*?)(?=^#{2,3} |\Z)", text, re.S | re.M):
        name, body = m.group(1), m.group(2)
        if name in ALGORITHMS and "| hyperparameter | default |" in body:
            out[name] = [line for line in body.splitlines() if line.startswith("| ") and "---" not in line][1:]
    return out


def _same(doc: str, default) -> bool:
    token = doc.split(" (")[0].split(" = ")[0].strip().strip("`").strip('"')
    if default is None:
        return token == "None"
    if isinstance(default, bool) or isinstance(default, str):
        return token == str(default)
    try:
        return float(token) == float(default)
    except ValueError:
        return False


def test_per_algorithm_tables_match_signatures():
    sections = _sections(DOCS.read_text(encoding="utf-8"))
    assert set(sections) == set(ALGORITHMS)  # every algorithm documents its defaults
    checked = 0
    for name, lines in sections.items():
        params = inspect.signature(ALGORITHMS[name]).parameters
        for line in lines:
            arg_cell, default_cell = [c.strip() for c in line.strip("|").split("|")][:2]
            arg = arg_cell.split(" ")[0].strip("`")
            if arg not in params or params[arg].default is inspect.Parameter.empty:
                continue
            assert _same(default_cell, params[arg].default), (name, arg, default_cell, params[arg].default)
            checked += 1
    assert checked > 50


def test_text_table_lists_every_algorithm():
    text = format_text(default_rows())
    lines = text.splitlines()
    assert lines[0].split() == ["algorithm", *COLUMNS]
    assert [ln.split()[0] for ln in lines[1:]] == sorted(ALGORITHMS)


def test_simdl_list_prints_the_table(capsys):
    from simdl.cli import cmd_list

    assert cmd_list() == 0
    out = capsys.readouterr().out
    assert format_text(default_rows()) in out


def test_config_names_cover_what_configs_accept():
    """simdl list names every kind of value a config accepts, from the constants the code validates against."""
    from simdl.catalog import config_names
    from simdl.compression import COMPRESSORS
    from simdl.faults import KEYS
    from simdl.models.batched import STRATEGIES
    from simdl.recipes import OPTIMIZERS

    rows = dict(config_names())
    for label in ("algorithms", "topologies", "datasets", "models", "partitions", "optimizers", "compressors",
                  "faults", "mixing", "execution", "schedules", "[train] keys", "[task] keys"):
        assert rows.get(label), label
    assert all(c in rows["compressors"] for c in COMPRESSORS)
    assert all(o in rows["optimizers"] for o in OPTIMIZERS)
    assert all(k in rows["faults"] for k in KEYS) and "renormalize" in rows["faults"]
    assert all(s in rows["execution"] for s in STRATEGIES) and "bfloat16" in rows["execution"]
    assert "base" in rows["topologies"] and "relaysum_mix" in rows["algorithms"]
