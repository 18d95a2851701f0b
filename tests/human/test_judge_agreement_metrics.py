"""Judge-vs-human metrics: exact values on a hand-made example."""

import json
from pathlib import Path

import pandas as pd
import pytest

from alignment_dagster.cli import main
from alignment_dagster.human.calibration import agreement_metrics


def test_agreement_metrics_exact() -> None:
    principles = pd.DataFrame(
        {
            "pair_id": ["x", "x", "y", "y", "z", "z"],
            "weight": [1.0, 1.0, 2.0, 1.0, 1.0, 1.0],
            "p_a_forward": [0.9, 0.8, 0.6, 0.9, 0.7, 0.7],
            "p_a_backward": [0.7, 0.6, 0.2, 0.3, 0.5, 0.5],
            "order_consistent": [True, True, False, False, False, False],
        }
    )
    pairs = pd.DataFrame(
        {"pair_id": ["x", "y", "z"], "label": ["A", "abstain", "abstain"], "p_a": [0.75, 0.5, 0.6]}
    )
    labels = pd.DataFrame({"pair_id": ["x", "y", "z", "w"], "label": ["A", "B", "B", "tie"]})
    responses = pd.DataFrame(
        {
            "pair_id": ["x", "y", "z"],
            "response_a": ["long reply", "ab", "abc"],
            "response_b": ["short", "abcd", "a"],
        }
    )
    m = agreement_metrics(principles, pairs, labels, responses)
    assert m["n"] == 3
    assert m["agreement"] == 1.0 and m["coverage"] == pytest.approx(1 / 3)
    assert m["agreement_forced"] == pytest.approx(1 / 3)  # x right, y tie (miss), z says A (wrong)
    assert m["agreement_single_order"] == pytest.approx(1 / 3)  # forward says A everywhere
    assert m["position_consistency"] == pytest.approx(2 / 6)
    # first slot wins: forward p>0.5 in 6/6, backward p_a<0.5 (first-shown B wins) in 2/6 -> 8/12
    assert m["first_position_win_rate"] == pytest.approx(8 / 12)
    assert m["shorter_reply_agreement"] == pytest.approx(1 / 3)  # shorter is B, A, B vs human A, B, B


def test_judge_eval_cli_on_the_dev_file() -> None:
    import json
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import REPO, SHARED_DATA

    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "alignment-dagster"),
            "judge-eval",
            "--data",
            str(SHARED_DATA),
            "--limit",
            "4",
            "--json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["n"] == 4 and report["judge_prompts"] == 4 * 5 * 2
    for key in [
        "agreement_single_order",
        "position_consistency",
        "first_position_win_rate",
        "coverage",
        "agreement_forced",
    ]:
        assert 0.0 <= report[key] <= 1.0
    assert report["pairs_per_second"] > 0 and report["judge_id"].startswith("transformers:smollm2")


def test_judge_eval_cli_reports_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def judge_eval(*args: str) -> tuple[int, str, str]:
        code = main(["judge-eval", *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    missing = tmp_path / "nope.jsonl"
    assert judge_eval("--data", str(missing)) == (
        1,
        "",
        f"{missing}: cannot read file (No such file or directory)\n",
    )
    yaml = tmp_path / "pairs.yaml"
    yaml.write_text("a: 1\n")
    assert judge_eval("--data", str(yaml)) == (
        1,
        "",
        f"{yaml}: unknown file format (use .jsonl, .csv or .parquet, optionally .gz)\n",
    )

    # Bad rows are printed (the first few) before the run stops at the missing constitution, not the model.
    data = tmp_path / "pairs.jsonl"
    good = json.dumps({"prompt": "q", "response_a": "x", "response_b": "y", "label": "A"})
    data.write_text(good + "\n" + "[1]\n" * 6)
    constitution = tmp_path / "none.yaml"
    shown = [f"bad pair row skipped: {data}: row {r}: expected a JSON object, got list" for r in range(2, 7)]
    code, out, err = judge_eval("--data", str(data), "--constitution", str(constitution), "--json")
    assert (code, out) == (1, "") and err.splitlines() == [
        *shown,
        "... and 1 more bad rows",
        f"INVALID {constitution}: cannot read file (No such file or directory)",
    ]

    with pytest.raises(SystemExit) as exit_:
        main(["judge-eval", "--data", str(data), "--limit", "0"])
    assert exit_.value.code == 2 and "argument --limit: must be >= 1, got 0" in capsys.readouterr().err
