"""data/sample.jsonl is produced by the generator, never by hand: regenerate and compare."""

from __future__ import annotations

from pathlib import Path

from progress_lab.cli import SAMPLE, main, sample_path

ROOT = Path(__file__).resolve().parent.parent


def test_sample_data_regenerates_byte_identical(tmp_path: Path) -> None:
    regenerated = tmp_path / "sample.jsonl"
    assert main(["generate", "--users", str(SAMPLE["users"]), "--days", str(SAMPLE["days"]),
                 "--seed", str(SAMPLE["seed"]), str(regenerated)]) == 0
    committed = ROOT / "data" / "sample.jsonl"
    assert sample_path() == committed
    assert regenerated.read_bytes() == committed.read_bytes()


def test_readme_names_the_command_that_made_the_sample() -> None:
    readme = (ROOT / "README.md").read_text()
    command = (
        f"progress-lab generate --users {SAMPLE['users']} --days {SAMPLE['days']} "
        f"--seed {SAMPLE['seed']} data/sample.jsonl"
    )
    assert command in readme


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci_lines = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci_lines[-1] in readme
    assert "pytest" in ci_lines[-1]
