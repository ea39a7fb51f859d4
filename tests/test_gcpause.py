"""The start-up's held garbage collector (``rlaccel.gcpause``): off from the entry point until
the first chunk is dispatched, then on with the start-up's objects frozen until the entry
point returns; back on (and unfrozen) on every way out; never turned on when the caller had
turned it off, and the caller's own frozen objects left frozen."""

import gc

import pytest

import rlaccel
from rlaccel import api, gcpause
from rlaccel.config import ConfigError
from rlaccel.sources.fused import FusedSource


@pytest.fixture(autouse=True)
def _collector_on():
    gc.enable()
    gc.unfreeze()
    yield
    gcpause.release()
    gc.enable()
    gc.unfreeze()


def test_held_freezes_at_release_and_unfreezes_at_its_end():
    with gcpause.held():
        assert not gc.isenabled()
        gcpause.hold()  # idempotent
        gcpause.release()
        assert gc.isenabled() and gc.get_freeze_count() > 0
        gc.disable()
        gcpause.release()  # nothing held any more: leaves the collector as it is
        assert not gc.isenabled()
        gc.enable()
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_a_collector_the_caller_turned_off_stays_off():
    gc.disable()
    with gcpause.held():
        assert not gc.isenabled()
        gcpause.release()
        assert not gc.isenabled() and gc.get_freeze_count() == 0
    assert not gc.isenabled()


def test_the_callers_frozen_objects_stay_frozen():
    gc.freeze()
    frozen = gc.get_freeze_count()
    with gcpause.held():
        gcpause.release()
        assert gc.isenabled() and gc.get_freeze_count() == frozen  # nothing more frozen
    assert gc.get_freeze_count() == frozen


def test_train_holds_start_up_and_releases_after_the_first_dispatch(monkeypatch, tmp_path, cartpole_yaml, tiny_overrides):
    seen = {"validate": [], "run_chunk": [], "frozen": []}
    validate, run_chunk = api.validate, FusedSource.run_chunk

    def validate_(config):
        seen["validate"].append(gc.isenabled())
        return validate(config)

    def run_chunk_(self, state, n):
        seen["run_chunk"].append(gc.isenabled())
        seen["frozen"].append(gc.get_freeze_count() > 0)
        return run_chunk(self, state, n)

    monkeypatch.setattr(api, "validate", validate_)
    monkeypatch.setattr(FusedSource, "run_chunk", run_chunk_)
    run = rlaccel.train(str(cartpole_yaml), overrides=tiny_overrides, run_dir=tmp_path / "run", progress=False)
    assert run.summary["status"] == "completed"
    assert seen["validate"] == [False]  # before JAX is imported
    assert seen["run_chunk"][0] is False and all(seen["run_chunk"][1:]) and len(seen["run_chunk"]) >= 2
    assert seen["frozen"][0] is False and all(seen["frozen"][1:])
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_train_releases_on_bad_input(tmp_path, cartpole_yaml):
    with pytest.raises(ConfigError):
        rlaccel.train(str(cartpole_yaml), overrides=["ppo.no_such_key=1"], run_dir=tmp_path / "run", progress=False)
    assert gc.isenabled() and gc.get_freeze_count() == 0
