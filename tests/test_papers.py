"""Every number the README reads off a figure or a table is the saved data's.

The README quotes generated blocks (``<!-- BEGIN generated: NAME -->`` ... ``<!-- END
generated: NAME -->``): each is what ``experiments/NAME.py``'s ``reading()`` makes of the
data that ``make figures`` / ``make papers`` saved beside the README's figures
(``docs/figures/NAME.json``). These tests regenerate every block from that data and
compare, so a rerun that changes a number fails here until the README is updated. The
--quick runs check that each experiment writes its summary and reading, and that
``papers.py`` builds its table from whatever outputs exist.
"""

import json
import re

import pytest
from conftest import QUICK_RUNS, ROOT, load_script
from test_experiments_gradients import EXPERIMENTS

README = ROOT / "README.md"
DOCS = ROOT / "docs" / "figures"
BLOCK = re.compile(r"<!-- BEGIN generated: (?P<name>\w+) -->\n(?P<body>.*?)<!-- END generated: (?P=name) -->", re.S)
READINGS = ("gradient_norms", "spectral_sweep", "layernorm_placement", "long_range")


def _blocks() -> dict[str, str]:
    found = {}
    for m in BLOCK.finditer(README.read_text(encoding="utf-8")):
        assert m["name"] not in found, f"two README blocks named {m['name']}"
        found[m["name"]] = m["body"]
    return found


@pytest.mark.parametrize("name", READINGS)
def test_readme_block_is_the_saved_data_read_by_the_experiment(name):
    module = load_script("experiments", name)
    summary = json.loads((DOCS / f"{name}.json").read_text(encoding="utf-8"))
    blocks = _blocks()
    assert name in blocks, f"README.md has no generated block for {name}"
    assert blocks[name] == module.reading(summary), (
        f"README.md's {name} block differs from experiments/{name}.py's reading of docs/figures/{name}.json: "
        "rerun `make figures` and paste results/<name>/reading.md into the block")


def test_readme_papers_table_is_the_saved_table():
    papers = load_script("experiments", "papers")
    saved = json.loads((DOCS / "papers.json").read_text(encoding="utf-8"))
    want = papers.markdown(saved["rows"], date=saved["date"], command=saved["command"], quick=saved["quick"])
    assert _blocks()["papers"] == want
    assert not saved["quick"], "the README's table must come from the default runs, not --quick ones"
    assert len(saved["rows"]) == len(papers.CLAIMS)
    assert [r["published"] for r in saved["rows"]] == [c.published for c in papers.CLAIMS]


def test_the_readme_block_numbers_come_from_one_run():
    """The headline's table, its chance levels and its sentences share one summary (no hand-copied numbers)."""
    summary = json.loads((DOCS / "gradient_norms.json").read_text(encoding="utf-8"))
    assert summary["eval_sequences"] >= 1024
    block = _blocks()["gradient_norms"]
    assert f"population's ({summary['chance_population']:.4f})" in block
    assert f"this batch's ({summary['chance_batch']:.4f})" in block
    assert "orthogonal" in summary["archs"]


@pytest.mark.slow
@QUICK_RUNS
def test_quick_runs_write_summary_and_reading_and_papers_builds_its_table(tmp_path, quick_run):
    """spectral_sweep, layernorm_placement and gradient_norms at --quick sizes (the runs
    test_experiments_gradients.py checks too), then papers.py --skip-runs on their outputs:
    each reading.md is reading(summary.json), every claim has a row, unrun experiments say so."""
    out = tmp_path / "papers"
    out.mkdir()
    for name in ("spectral_sweep", "layernorm_placement", "gradient_norms"):
        (out / name).symlink_to(quick_run(name, *EXPERIMENTS[name][0]), target_is_directory=True)
    for name in ("spectral_sweep", "layernorm_placement"):
        module = load_script("experiments", name)
        summary = json.loads((out / name / "summary.json").read_text())
        assert (out / name / "reading.md").read_text() == module.reading(summary)
    assert (out / "layernorm_placement" / "layernorm_depth.png").stat().st_size > 10_000
    # the headline with the orthogonal RNN: its curve is flat at init (the far end within 2x of the near end)
    gn = load_script("experiments", "gradient_norms")
    summary = json.loads((out / "gradient_norms" / "summary.json").read_text())
    assert (out / "gradient_norms" / "reading.md").read_text() == gn.reading(summary)
    assert summary["chance_batch"] > 0 and summary["eval_sequences"] == gn.QUICK["eval_batch_size"]
    assert 0.5 < summary["archs"]["orthogonal"]["init"]["far_to_near"] <= 1.0 + 1e-6
    assert summary["archs"]["rnn_tanh"]["init"]["far_to_near"] < 0.5
    papers = load_script("experiments", "papers")
    papers.main(["--quick", "--skip-runs", "--out", str(out)])
    saved = json.loads((out / "papers.json").read_text())
    assert sorted(saved["quick"]) == ["gradient_norms", "layernorm_placement", "spectral_sweep"]
    rows = saved["rows"]
    assert len(rows) == len(papers.CLAIMS)
    by_source = {(r["paper"], r["setting"]): r for r in rows}
    assert all(r["agrees"] == "not run" for r in rows if r["where"].startswith("Fig. "))   # long_range's
    pascanu = [r for r in rows if r["paper"].startswith("Pascanu")]
    assert [r["agrees"] for r in pascanu] == ["yes", "yes"]          # a bound holds at any size
    assert all(r["agrees"] in ("yes", "no") for r in rows if r["paper"].startswith("Xiong"))
    assert by_source[(papers.ARJOVSKY, "seqjax: the headline figure, adding T = 100, at initialisation")][
        "agrees"] == "yes"
    text = (out / "papers.md").read_text()
    assert "Quick sizes (not the defaults)" in text and text.count("\n| ") == len(rows) + 1
