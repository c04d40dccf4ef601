"""Settings read from the environment: a wrong value stops the process with what and where."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.fernet import Fernet

from config import Config

GIVEN_KEY = "given-key-at-least-thirty-two-bytes-long"


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


@pytest.mark.parametrize("raw", ["0", "-1", "150", "300"])
def test_an_import_progress_interval_out_of_range_is_refused(monkeypatch, tmp_path, raw):
    """Progress is the heartbeat: written less than twice per IMPORT_STALE_AFTER_SECONDS (300
    by default), a live import would be taken for a dead one."""
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    monkeypatch.delenv("IMPORT_STALE_AFTER_SECONDS", raising=False)
    monkeypatch.setenv("IMPORT_PROGRESS_SECONDS", raw)
    with pytest.raises(RuntimeError, match=re.escape(
            "IMPORT_PROGRESS_SECONDS must be more than 0 and less than half of "
            f"IMPORT_STALE_AFTER_SECONDS (300), got {float(raw):g}")):
        Config()


def test_the_import_progress_interval_defaults_to_a_second(monkeypatch, tmp_path):
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    monkeypatch.delenv("IMPORT_PROGRESS_SECONDS", raising=False)
    assert Config().IMPORT_PROGRESS_SECONDS == 1.0
    monkeypatch.setenv("IMPORT_PROGRESS_SECONDS", "0.1")
    assert Config().IMPORT_PROGRESS_SECONDS == 0.1


def test_the_resend_interval_defaults_to_ten_minutes_and_is_never_negative(monkeypatch,
                                                                            tmp_path):
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    monkeypatch.delenv("RESEND_MIN_INTERVAL_MINUTES", raising=False)
    assert Config().RESEND_MIN_INTERVAL_MINUTES == 10
    monkeypatch.setenv("RESEND_MIN_INTERVAL_MINUTES", "0")
    assert Config().RESEND_MIN_INTERVAL_MINUTES == 0
    monkeypatch.setenv("RESEND_MIN_INTERVAL_MINUTES", "-1")
    with pytest.raises(RuntimeError, match="RESEND_MIN_INTERVAL_MINUTES must be 0 or more, "
                                           "got -1"):
        Config()


def test_the_reminder_delay_defaults_to_three_days_and_is_never_negative(monkeypatch, tmp_path):
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    monkeypatch.delenv("INVITE_REMINDER_DAYS", raising=False)
    assert Config().INVITE_REMINDER_DAYS == 3
    monkeypatch.setenv("INVITE_REMINDER_DAYS", "0")
    assert Config().INVITE_REMINDER_DAYS == 0
    monkeypatch.setenv("INVITE_REMINDER_DAYS", "-1")
    with pytest.raises(RuntimeError, match="INVITE_REMINDER_DAYS must be 0 or more, got -1"):
        Config()


def test_given_settings_win_and_a_given_key_writes_no_file(monkeypatch, tmp_path):
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path / "from-environment"))
    monkeypatch.setenv("SECRET_KEY", "")
    config = Config({"INSTANCE_PATH": str(tmp_path / "given"), "SECRET_KEY": GIVEN_KEY,
                     "DATABASE_URL": "postgresql://perks@db/perks",
                     "CODE_ENCRYPTION_KEY": Fernet.generate_key().decode()})
    assert config.INSTANCE_PATH == str(tmp_path / "given") and config.SECRET_KEY == GIVEN_KEY
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


def _no_code_keys(monkeypatch, tmp_path):
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    for name in ("CODE_ENCRYPTION_KEY", "CODE_FINGERPRINT_KEY", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)


def test_a_postgresql_configuration_without_a_code_key_refuses_to_start(monkeypatch, tmp_path):
    _no_code_keys(monkeypatch, tmp_path)
    monkeypatch.setenv("DATABASE_URL", "postgresql://perks@db/perks")
    with pytest.raises(RuntimeError, match=re.escape(
            "CODE_ENCRYPTION_KEY is not set") + ".*" + re.escape(
            'Make one with: python -c "from cryptography.fernet import Fernet;'
            'print(Fernet.generate_key().decode())"')):
        Config()
    assert not (tmp_path / "code_encryption_key").exists()
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("CODE_ENCRYPTION_KEY", key)
    assert Config().CODE_ENCRYPTION_KEY == key


@pytest.mark.parametrize("keys", ["not-a-key", "{good}, short", "{good},"])
def test_a_code_key_that_is_not_a_fernet_key_is_refused_by_position_never_shown(
        monkeypatch, tmp_path, keys):
    _no_code_keys(monkeypatch, tmp_path)
    monkeypatch.setenv("CODE_ENCRYPTION_KEY", keys.format(good=Fernet.generate_key().decode()))
    with pytest.raises(RuntimeError, match=r"CODE_ENCRYPTION_KEY: key \d of \d is not a Fernet "
                                           r"key.*make one with: python -c") as refused:
        Config()
    assert "short" not in str(refused.value) and "not-a-key" not in str(refused.value)


def test_several_code_keys_are_kept_newest_first(monkeypatch, tmp_path):
    _no_code_keys(monkeypatch, tmp_path)
    new, old = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv("CODE_ENCRYPTION_KEY", f" {new} , {old} ")
    assert Config().CODE_ENCRYPTION_KEY == f"{new},{old}"


def test_a_short_fingerprint_key_is_refused(monkeypatch, tmp_path):
    _no_code_keys(monkeypatch, tmp_path)
    monkeypatch.setenv("CODE_FINGERPRINT_KEY", "short")
    with pytest.raises(RuntimeError, match="CODE_FINGERPRINT_KEY must be at least 32 bytes"):
        Config()


def test_the_embedded_default_makes_one_code_key_for_every_process_of_an_install(
        monkeypatch, tmp_path):
    """Processes starting together on a fresh install all read the one key that was made."""
    _no_code_keys(monkeypatch, tmp_path)
    barrier = threading.Barrier(8)

    def start():
        barrier.wait()
        return Config().CODE_ENCRYPTION_KEY

    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: start(), range(8)))
    key_file = tmp_path / "code_encryption_key"
    assert keys == {key_file.read_text().strip()}
    Fernet(keys.pop())  # a real key
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir() if "code" in p.name] == [
        "code_encryption_key"]  # no half-made key left behind


def test_a_given_code_key_writes_no_file(monkeypatch, tmp_path):
    _no_code_keys(monkeypatch, tmp_path)
    key = Fernet.generate_key().decode()
    assert Config({"CODE_ENCRYPTION_KEY": key}).CODE_ENCRYPTION_KEY == key
    assert not (tmp_path / "code_encryption_key").exists()
@pytest.mark.parametrize("key", ["a", "test-secret-key", "x" * 31, "é" * 15])
def test_a_short_secret_key_is_refused_with_how_to_make_one(monkeypatch, tmp_path, key):
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    monkeypatch.setenv("SECRET_KEY", key)
    with pytest.raises(RuntimeError) as refused:
        Config()
    message = str(refused.value)
    assert message.startswith("SECRET_KEY must be at least 32 bytes long")
    assert 'python -c "import secrets;print(secrets.token_urlsafe(48))"' in message
    assert len(key) < 5 or key not in message  # the key itself is never printed
    monkeypatch.delenv("SECRET_KEY")
    with pytest.raises(RuntimeError, match="^SECRET_KEY must be at least 32 bytes"):
        Config({"SECRET_KEY": key, "DATABASE_URL": "postgresql://perks@db/perks"})
    assert not (tmp_path / "secret_key").exists()


def test_a_key_of_32_bytes_is_taken(monkeypatch, tmp_path):
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    monkeypatch.setenv("SECRET_KEY", "k" * 32)
    assert Config().SECRET_KEY == "k" * 32
    monkeypatch.setenv("SECRET_KEY", "é" * 16)  # bytes, not characters
    assert Config().SECRET_KEY == "é" * 16


def test_a_short_key_left_in_the_instance_folder_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    monkeypatch.delenv("SECRET_KEY", raising=False)
    (tmp_path / "secret_key").write_text("\n")  # e.g. a disk that filled up mid-write
    with pytest.raises(RuntimeError, match=re.escape(f"{tmp_path / 'secret_key'} must be at "
                                                     "least 32 bytes long, got 0")):
        Config()


def _config_key(instance: str, start, keys) -> None:
    import os

    os.environ["INSTANCE_PATH"] = instance
    os.environ.pop("SECRET_KEY", None)
    start.wait()
    keys.put(Config().SECRET_KEY)


def test_processes_starting_together_on_a_fresh_install_share_one_key(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    for round_ in range(3):
        instance = tmp_path / f"fresh-{round_}" / "instance"  # not there yet
        start, keys = context.Barrier(6), context.Queue()
        processes = [context.Process(target=_config_key, args=(str(instance), start, keys))
                     for _ in range(6)]
        for process in processes:
            process.start()
        seen = [keys.get(timeout=60) for _ in processes]
        for process in processes:
            process.join(timeout=60)
            assert process.exitcode == 0
        assert len(set(seen)) == 1 and len(seen[0]) >= 32
        assert seen[0] == (instance / "secret_key").read_text().strip()
        assert sorted(p.name for p in instance.iterdir()) == [  # no leftovers
            "code_encryption_key", "secret_key"]


def _start_one(start, seen: list, errors: list) -> None:
    start.wait()
    try:
        seen.append(Config().SECRET_KEY)
    except Exception as exc:  # noqa: BLE001 - a refused (half-written) key counts as a failure
        errors.append(exc)


def test_threads_starting_together_on_a_fresh_install_share_one_key(monkeypatch, tmp_path):
    import threading

    monkeypatch.delenv("SECRET_KEY", raising=False)
    for round_ in range(20):
        instance = tmp_path / f"fresh-{round_}"
        monkeypatch.setenv("INSTANCE_PATH", str(instance))
        start, seen, errors = threading.Barrier(8), [], []
        threads = [threading.Thread(target=_start_one, args=(start, seen, errors))
                   for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors and len(set(seen)) == 1 and len(seen) == 8
        assert (instance / "secret_key").stat().st_mode & 0o777 == 0o600
