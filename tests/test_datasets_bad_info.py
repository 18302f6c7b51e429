"""A dataset folder whose meta/info.json is garbage, truncated or of the wrong shape: `edgedp dataset repair`
and `dataset info` print one line naming the file and the problem, exit 2, and touch nothing (repair must
not delete staged files or finish a journal in a folder it cannot read); `record --append` refuses too."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("av")

from edgedp.datasets import DatasetError, commit  # noqa: E402
from edgedp.datasets.writer import DatasetWriter  # noqa: E402
from test_datasets_record import _cli  # noqa: E402

FEATURES = {"observation.state": {"dtype": "float32", "shape": [2], "names": ["a", "b"]},
            "action": {"dtype": "float32", "shape": [2], "names": ["a", "b"]}}

# (info.json text, words the one error line must contain)
GARBAGE = [
    ("garbage{", "not valid JSON"),
    ("", "empty"),
    ("[]", "a JSON object is expected, found []"),
    ("null", "a JSON object is expected, found null"),
    ('{"codebase_version": 5}', "codebase_version 5"),
    ('{"codebase_version": "v3.0"}', "'features'"),
    ('{"codebase_version": "v3.0", "features": {"action": 3}, "fps": 10, "data_path": "d"}', "feature 'action'"),
]


@pytest.fixture()
def valid(tmp_path):
    """A real two-episode v3.0 dataset (no camera: written in well under a second)."""
    root = tmp_path / "ds"
    w = DatasetWriter.create(root, 10, FEATURES)
    rng = np.random.default_rng(0)
    for n in (4, 3):
        w.add_episode({k: rng.normal(size=(n, 2)).astype(np.float32) for k in FEATURES}, "t")
    return root


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _truncated(root) -> str:
    text = (root / "meta/info.json").read_text()
    return text[: len(text) // 2]


def test_valid_dataset_repairs_and_reports(valid):
    staged = valid / "data" / f".x{commit.TMP_SUFFIX}"
    staged.write_bytes(b"half an episode")
    r = _cli("dataset", "repair", str(valid))
    assert r.returncode == 0, r.stderr
    assert "removed 1 staged file" in r.stdout and not staged.exists()
    r = _cli("dataset", "info", str(valid), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["episodes"] == 2


@pytest.mark.parametrize("text,words", GARBAGE + [(None, "not valid JSON")], ids=lambda v: repr(v)[:24])
def test_garbage_info_json_is_one_line_exit_2_and_nothing_touched(valid, text, words):
    info = valid / "meta/info.json"
    info.write_text(_truncated(valid) if text is None else text)
    (valid / "data" / f".x{commit.TMP_SUFFIX}").write_bytes(b"staged by a crashed write")
    (valid / commit.JOURNAL).write_text(json.dumps({"renames": [["data/.x.edgedp-tmp", "data/y.parquet"]]}))
    before = _tree(valid)
    for verb in ("repair", "info"):
        r = _cli("dataset", verb, str(valid))
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (verb, r.stdout, r.stderr)
        assert len(lines) == 1 and "meta/info.json" in lines[0] and words in lines[0], (verb, r.stderr)
        assert _tree(valid) == before, verb
    with pytest.raises(DatasetError, match="meta/info.json"):
        DatasetWriter.open_for_append(valid)  # record --append: refused before recover() touches anything
    assert _tree(valid) == before
