"""Settings read from the environment: a wrong value stops the process with what and where."""

from __future__ import annotations

import re

import pytest

from config import Config


@pytest.mark.parametrize(("raw", "message"), [
    ("ten", "WORKER_NICENESS must be a whole number, got 'ten'"),
    ("-5", "WORKER_NICENESS must be from 0 (as the web) to 19 (lowest priority), got -5"),
    ("20", "WORKER_NICENESS must be from 0 (as the web) to 19 (lowest priority), got 20"),
])
def test_a_worker_niceness_out_of_range_is_refused(monkeypatch, tmp_path, raw, message):
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    monkeypatch.setenv("WORKER_NICENESS", raw)
    with pytest.raises(RuntimeError, match=re.escape(message)):
        Config()


def test_worker_niceness_defaults_to_the_webs(monkeypatch, tmp_path):
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    monkeypatch.delenv("WORKER_NICENESS", raising=False)
    assert Config().WORKER_NICENESS == 0
    monkeypatch.setenv("WORKER_NICENESS", "10")
    assert Config().WORKER_NICENESS == 10


def test_given_settings_win_and_a_given_key_writes_no_file(monkeypatch, tmp_path):
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path / "from-environment"))
    monkeypatch.setenv("SECRET_KEY", "")
    config = Config({"INSTANCE_PATH": str(tmp_path / "given"), "SECRET_KEY": "given-key",
                     "DATABASE_URL": "postgresql://perks@db/perks"})
    assert config.INSTANCE_PATH == str(tmp_path / "given") and config.SECRET_KEY == "given-key"
    assert config.OUTBOX_DIR == str(tmp_path / "given" / "outbox")
    assert config.DATABASE_URL == "postgresql+psycopg://perks@db/perks"
    assert not (tmp_path / "given" / "secret_key").exists()
    assert not (tmp_path / "from-environment").exists()


def test_without_a_key_one_is_made_once_in_the_instance_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    monkeypatch.delenv("SECRET_KEY", raising=False)
    first, again = Config().SECRET_KEY, Config().SECRET_KEY
    assert first == again == (tmp_path / "secret_key").read_text().strip()
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
