from __future__ import annotations

from pathlib import Path

import pytest

from aiassist.settings import Settings, SettingsError, load_settings, read_settings


def test_defaults_are_the_embedded_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AIASSIST_DATABASE_URL", "AIASSIST_MODE", "AIASSIST_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert s.mode == "local"
    assert s.resolved_database_url.startswith("sqlite:///")
    assert s.resolved_database_url.endswith("/.aiassist/aiassist.db")
    assert s.resolved_models_dir == Path(".aiassist/models")


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIASSIST_TIMEOUT_MS", "25")
    monkeypatch.setenv("AIASSIST_MODE", "remote")
    s = load_settings()
    assert (s.timeout_ms, s.mode) == (25, "remote")


def test_wrong_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIASSIST_PORT", "99999")
    monkeypatch.setenv("AIASSIST_MODE", "sideways")
    with pytest.raises(SettingsError) as exc:
        load_settings()
    message = str(exc.value)
    assert "AIASSIST_PORT" in message and "99999" in message
    assert "AIASSIST_MODE" in message and "sideways" in message


def test_config_file_is_below_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "aiassist.toml"
    config.write_text('timeout_ms = 40\nservice_url = "http://ai:8000"\n')
    monkeypatch.setenv("AIASSIST_CONFIG", str(config))
    monkeypatch.setenv("AIASSIST_TIMEOUT_MS", "30")
    s = load_settings()
    assert s.timeout_ms == 30  # the environment wins
    assert s.service_url == "http://ai:8000"  # the file fills the rest


def test_bad_config_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIASSIST_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(SettingsError, match="AIASSIST_CONFIG: no such file"):
        load_settings()
    broken = tmp_path / "broken.toml"
    broken.write_text("timeout_ms = = 3")
    monkeypatch.setenv("AIASSIST_CONFIG", str(broken))
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings()


def test_api_key_from_file_is_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("aia_abc_s3cret\n")
    monkeypatch.setenv("AIASSIST_API_KEY_FILE", str(key_file))
    s = load_settings()
    assert s.api_key is not None and s.api_key.get_secret_value() == "aia_abc_s3cret"
    assert "s3cret" not in repr(s)


def test_unreadable_key_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="AIASSIST_API_KEY_FILE: cannot read"):
        load_settings(api_key_file=tmp_path / "nope")


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValueError):
        s.port = 1  # type: ignore[misc]


def test_empty_api_key_means_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("aia_abc_fromfile\n")
    monkeypatch.setenv("AIASSIST_API_KEY", "")
    monkeypatch.setenv("AIASSIST_API_KEY_FILE", str(key_file))
    s = load_settings()
    assert s.api_key is not None and s.api_key.get_secret_value() == "aia_abc_fromfile"


def test_a_module_reads_its_own_prefix_and_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`AIASSIST_PRIORITY_*` beats `[priority]` in the file, which beats the defaults; the
    old top-level `priority_*` keys of a file still count, below the table."""
    from aiassist.modules.priority import PrioritySettings

    config = tmp_path / "aiassist.toml"
    config.write_text(
        "timeout_ms = 40\npriority_risk_s = 9\npriority_horizon_s = 1\n"
        "[priority]\nrescue_s = 60\nweight_s = 7\nhorizon_s = 2\n"
    )
    monkeypatch.setenv("AIASSIST_CONFIG", str(config))
    monkeypatch.setenv("AIASSIST_PRIORITY_WEIGHT_S", "11")
    own = read_settings(PrioritySettings)
    assert (own.rescue_s, own.weight_s, own.risk_s, own.horizon_s) == (60, 11, 9, 2)
    assert own.rescue_gap_s == PrioritySettings.model_fields["rescue_gap_s"].default
    assert load_settings().timeout_ms == 40  # the shared settings read the same file
    assert not hasattr(load_settings(), "priority_rescue_s")  # no copy in the global ones


def test_a_wrong_module_setting_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiassist.drift.settings import DriftSettings
    from aiassist.modules.priority import PrioritySettings

    monkeypatch.setenv("AIASSIST_PRIORITY_RESCUE_S", "-1")
    with pytest.raises(SettingsError, match=r"AIASSIST_PRIORITY_RESCUE_S: .* \(got '-1'\)"):
        read_settings(PrioritySettings)
    monkeypatch.setenv("AIASSIST_DRIFT_WEBHOOK_SECRET", "x" * 3)
    monkeypatch.setenv("AIASSIST_DRIFT_WEBHOOK_URL", "u" * 3000)
    with pytest.raises(SettingsError, match="AIASSIST_DRIFT_WEBHOOK_URL") as exc:
        read_settings(DriftSettings)
    assert "xxx" not in str(exc.value)
