"""The start-up's held garbage collector (``rlaccel.gcpause``): off from the entry point until
the first chunk is dispatched, back on after, on every way out, and never turned on when the
caller had turned it off."""

import gc

import pytest

import rlaccel
from rlaccel import api, gcpause
from rlaccel.config import ConfigError
from rlaccel.sources.fused import FusedSource


@pytest.fixture(autouse=True)
def _collector_on():
    gc.enable()
    yield
    gcpause.release()
    gc.enable()


def test_hold_and_release():
    gcpause.hold()
    assert not gc.isenabled()
    gcpause.hold()  # idempotent
    gcpause.release()
    assert gc.isenabled()
    gc.disable()
    gcpause.release()  # nothing held any more: leaves the collector as it is
    assert not gc.isenabled()


def test_a_collector_the_caller_turned_off_stays_off():
    gc.disable()
    with gcpause.held():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_train_holds_start_up_and_releases_after_the_first_dispatch(monkeypatch, tmp_path, cartpole_yaml, tiny_overrides):
    seen = {"validate": [], "run_chunk": []}
    validate, run_chunk = api.validate, FusedSource.run_chunk

    def validate_(config):
        seen["validate"].append(gc.isenabled())
        return validate(config)

    def run_chunk_(self, state, n):
        seen["run_chunk"].append(gc.isenabled())
        return run_chunk(self, state, n)

    monkeypatch.setattr(api, "validate", validate_)
    monkeypatch.setattr(FusedSource, "run_chunk", run_chunk_)
    run = rlaccel.train(str(cartpole_yaml), overrides=tiny_overrides, run_dir=tmp_path / "run", progress=False)
    assert run.summary["status"] == "completed"
    assert seen["validate"] == [False]  # before JAX is imported
    assert seen["run_chunk"][0] is False and all(seen["run_chunk"][1:]) and len(seen["run_chunk"]) >= 2
    assert gc.isenabled()


def test_train_releases_on_bad_input(tmp_path, cartpole_yaml):
    with pytest.raises(ConfigError):
        rlaccel.train(str(cartpole_yaml), overrides=["ppo.no_such_key=1"], run_dir=tmp_path / "run", progress=False)
    assert gc.isenabled()
