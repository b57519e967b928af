"""Fixtures for the tuning tests: every table source and the study storage point into
tmp_path, and the runtime's parse cache starts and ends empty."""

from __future__ import annotations

import pytest

from questkern.configs import paths, runtime


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """{'env', 'cache', 'shipped', 'data'}: the three table sources and the data dir, all empty."""
    d = {name: tmp_path / name for name in ("env", "cache", "shipped", "data")}
    for p in d.values():
        p.mkdir()
    monkeypatch.setenv(paths.ENV_TUNING_DIR, str(d["env"]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(d["data"]))
    monkeypatch.delenv(paths.ENV_STORAGE, raising=False)
    monkeypatch.setenv("QUESTKERN_TRACE_DIR", str(tmp_path / "no-traces"))  # quality: the synthetic objective
    monkeypatch.setattr(paths, "user_cache_dir", lambda: d["cache"])
    monkeypatch.setattr(paths, "SHIPPED_DIR", d["shipped"])
    runtime.clear_cache()
    yield d
    runtime.clear_cache()
