"""One record-id function and one CSV writer for ``simdl run`` and ``simdl sweep`` (``simdl.results``)."""

import hashlib
import json

from simdl.results import record_id
from simdl.sweep import run_id


def test_record_id_is_the_documented_hash_and_sweeps_drop_the_run_name():
    task, train = {"dataset": "digits", "n_workers": 8}, {"steps": 10, "seed": 0}
    run = {"name": "a", "algorithm": "dsgd"}
    core = {"task": task, "train": train, "run": run}
    assert record_id(task, train, run) == hashlib.sha1(json.dumps(core, sort_keys=True).encode()).hexdigest()[:12]
    spec = {"task": task, "train": train, "run": run}
    assert run_id(spec) == record_id(task, train, {"algorithm": "dsgd"})  # the label may change, the id not
    assert run_id(spec) == run_id({**spec, "run": {**run, "name": "renamed"}})
    # a [system] or [participation] table is part of the id; an absent one is not
    ids = {record_id(task, train, run), record_id(task, train, run, {"latency": 0.01}),
           record_id(task, train, run, None, {"kind": "client_sampling", "k": 2})}
    assert len(ids) == 3
    assert run_id({**spec, "system": {"latency": 0.01}}) == record_id(task, train, {"algorithm": "dsgd"},
                                                                      {"latency": 0.01})


def test_one_csv_writer(tmp_path):
    """``simdl.results.write_csv``: header, None as an empty field, refuses a key outside the columns."""
    import csv

    import pytest

    from simdl.results import write_csv

    write_csv(tmp_path / "t.csv", ["a", "b"], [{"a": 1, "b": None}, {"a": 2.5}])
    rows = list(csv.reader((tmp_path / "t.csv").open()))
    assert rows == [["a", "b"], ["1", ""], ["2.5", ""]]
    with pytest.raises(ValueError):
        write_csv(tmp_path / "u.csv", ["a"], [{"a": 1, "c": 2}])
