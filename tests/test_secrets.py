"""Passwords never reach what ablate writes: the redaction function, then a real job run with a raw
database URL as an override, grepped for the password across results, wandb files and report."""
from __future__ import annotations

from pathlib import Path

import pytest

from ablate.config import short_dirname
from ablate.secrets import redact, redact_tree
from conftest import clean_env, load_records, run_cli


@pytest.mark.parametrize("text,expected", [
    ("postgresql://me:pw@db:5432/optuna", "postgresql://me:***@db:5432/optuna"),
    ("postgresql://:pw@db/optuna", "postgresql://:***@db/optuna"),
    ("mysql+pymysql://me:p@ss:w@db/x", "mysql+pymysql://me:***@db/x"),  # an unescaped @ or :
    ("https://user:se/cret@host", "https://user:***@host"),  # an unescaped /
    ("redis://:a/b@c@cache:6379/0", "redis://:***@cache:6379/0"),
    ("mysql://db/x?user=me&password=pw&ssl=1", "mysql://db/x?user=me&password=***&ssl=1"),
    ("postgresql://db/x?PASSWORD=pw", "postgresql://db/x?PASSWORD=***"),
    ("x://h/?token=t1&pwd=p2;pass=p3 secret=s4", "x://h/?token=***&pwd=***;pass=*** secret=***"),
    ("+tuning.storage='postgresql://u:pw@h/db' seed=0", "+tuning.storage='postgresql://u:***@h/db' seed=0"),
])
def test_passwords_and_tokens_are_masked(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert redact(expected) == expected  # idempotent


@pytest.mark.parametrize("text", [
    "sqlite:////abs/optuna.db", "journal:///shared/x.log", "http://host:8080/path?user=me",
    "env:ABLATE_OPTUNA_URL", "file:/etc/optuna-url", "https://host:8080/a/b?c=d", "trainer.lr_base=0.001", "passes=3",
])
def test_text_without_a_secret_is_unchanged(text: str) -> None:
    assert redact(text) == text


def test_trees_are_redacted_everywhere_and_keep_their_shape() -> None:
    tree = {"a": ["x://u:pw@h", ("y?token=t", 3)], "b": {"c": None, "d": "ok"}}
    assert redact_tree(tree) == {"a": ["x://u:***@h", ("y?token=***", 3)], "b": {"c": None, "d": "ok"}}


def test_long_job_folder_names_are_cut_with_a_hash_deterministically() -> None:
    short = "model=pico,seed=0"
    assert short_dirname(short) == short
    long_a, long_b = "x=" + "a" * 300, "x=" + "a" * 299 + "b"
    cut = short_dirname(long_a)
    assert len(cut.encode()) == 255 and cut == short_dirname(long_a)
    assert cut != short_dirname(long_b) and cut[:200] == short_dirname(long_b)[:200]
    assert len(short_dirname("é" * 200).encode()) <= 255  # cut at a character boundary
    assert [len(p.encode()) for p in short_dirname(f"{short}/{long_a}").split("/")] == [len(short), 255]


def test_a_raw_database_url_override_leaves_no_password_in_anything_ablate_writes(
    tmp_path: Path, tiny_args: list[str]
) -> None:
    url = "postgresql://user:S3cretA@db.example/optuna?sslmode=require&password=S3cretB"
    # A final-comparison job gets no pruning reporter, so it never connects to this database.
    args = ["-m", *(a for a in tiny_args if a != "logger=none"), "logger=wandb", "sweep=sec",
            f"+tuning.storage='{url}'", "+tuning.role=final", "+tuning.study=s", "+tuning.trial=0"]
    run_cli(args, tmp_path, env=clean_env(HOME=str(tmp_path)))  # no API key: wandb offline
    (record,) = load_records(tmp_path / "results")
    assert record["status"] == "completed"
    assert record["tuning"]["storage"] == "postgresql://user:***@db.example/optuna?sslmode=require&password=***"
    assert list((tmp_path / "results" / "runs" / record["run_id"] / "wandb").glob("offline-run-*/*.wandb"))
    leaks = [str(p.relative_to(tmp_path)) for p in sorted(tmp_path.rglob("*"))
             if p.is_file() and b"S3cret" in p.read_bytes()]
    assert leaks == []
    assert "postgresql://user:***@db.example" in (tmp_path / "reports" / "sec" / "results.csv").read_text()
