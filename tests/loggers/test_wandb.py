"""W&B online mode without a login fails as one clear line (nothing reaches the network: no key)."""

import pytest

from memos_lab.errors import ConfigError
from memos_lab.loggers.wandb import WandbTracker


def test_online_mode_without_login_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, so no stored key
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    tracker = WandbTracker(mode="online", group="sweep-1")
    with pytest.raises(ConfigError, match=r"W&B \(online mode\):.*wandb login.*logger.mode=offline"):
        tracker.start(str(tmp_path), {"seed": 0})
