"""The CSLR example's checkpoints (examples/cslr/cslr_checkpoint.py) and train.py's resume: a run
stopped after any epoch and resumed from its checkpoint ends exactly where the undisturbed run
does (the same weights, history and best epoch), and a checkpoint of other settings is refused."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "cslr"))
import cslr_checkpoint as ckpt
import cslr_core as core
import train


def test_a_checkpoint_round_trips_and_replaces_the_previous_one_whole(tmp_path):
    best = (2, 0.25, [[1.0, 2.0]])
    first = ckpt.state(2, [[0.5, 0.25]], {"t": 7, "m": [[0.1, 0.2]], "v": [[0.3, 0.4]]}, best, [0.5, 0.25], 2, "run1", "f" * 16)
    path = ckpt.write(tmp_path / "c", first)
    assert ckpt.read(tmp_path / "c", "f" * 16) == first and ckpt.best_of(first) == best
    second = {**first, "epoch": 3}
    ckpt.write(tmp_path / "c", second)
    assert json.loads(path.read_text())["epoch"] == 3 and sorted(p.name for p in (tmp_path / "c").iterdir()) == ["checkpoint.json"]
    # Before the first epoch the best score is +inf, which JSON cannot hold.
    empty = ckpt.state(0, [[0.0]], {"t": 0, "m": [[0.0]], "v": [[0.0]]}, (0, math.inf, [[0.0]]), [], 1, None, "f" * 16)
    ckpt.write(tmp_path / "e", empty)
    assert ckpt.best_of(ckpt.read(tmp_path / "e", "f" * 16))[1] == math.inf


def test_no_checkpoint_is_none_and_a_bad_one_says_why(tmp_path):
    assert ckpt.read(tmp_path, "x") is None
    (tmp_path / "checkpoint.json").write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match="not a checkpoint"):
        ckpt.read(tmp_path, "x")
    (tmp_path / "checkpoint.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(ckpt.CheckpointError, match="format 99, expected 1"):
        ckpt.read(tmp_path, "x")
    (tmp_path / "checkpoint.json").write_text(json.dumps({"format": 1, "fingerprint": "y"}))
    with pytest.raises(ckpt.CheckpointError, match="other training settings"):
        ckpt.read(tmp_path, "x")


def test_the_fingerprint_ignores_what_does_not_change_the_training():
    base = vars(train.parse([]))
    assert ckpt.fingerprint(base) == ckpt.fingerprint({**base, "run_name": "x", "workers": 3, "checkpoint_every": 5, "experiment": "e"})
    assert ckpt.fingerprint(base) != ckpt.fingerprint({**base, "lr": 0.01})


@given(st.integers(1, 50), st.integers(0, 10), st.integers(1, 50))
def test_checkpoints_are_due_every_n_epochs_and_after_the_last(epoch, every, epochs):
    expected = every > 0 and (epoch % every == 0 or epoch == epochs)
    assert ckpt.due(epoch, every, epochs) is expected


def test_the_default_folder_is_the_runs_in_the_workspace(tmp_path):
    assert ckpt.default_folder(Path("/x"), {}) == Path("/x")
    assert ckpt.default_folder(None, {"CSLR_RUN_ID": "r1"}, tmp_path) == tmp_path / "checkpoints" / "r1"
    assert ckpt.default_folder(None, {}, tmp_path) is None  # not submitted by inv submit: no checkpoints
    assert ckpt.default_folder(None, {"CSLR_RUN_ID": "r1"}, tmp_path / "absent") is None
    assert ckpt.default_folder(None, {"CSLR_RUN_ID": "../up"}, tmp_path) is None


def _synthetic(epochs: int, folder: Path, stop_after: int | None = None, resume: bool = False):
    """train.py's synthetic path in process (two in-process shards), checkpointing every epoch to
    `folder`; `stop_after` ends it there (as a node's death would), `resume` starts from the folder."""
    args = train.parse(["--train", "40", "--test", "10", "--epochs", str(epochs), "--batch", "8", "--backend", "python"])
    shards = [train.Shard(i, 20, args.seed, args.vocab, args.keypoints, args.context, "python") for i in range(2)]
    model = core.Model.create(args.vocab, 2 * args.keypoints, args.context, seed=args.seed)
    opt = core.Adam((model.classes, model.inputs), lr=args.lr)
    fp = ckpt.fingerprint(vars(args))
    saved = ckpt.read(folder, fp) if resume else None
    if saved:
        train.restore(saved, model, opt)
    history = list(saved["history"]) if saved else []
    test = core.make_dataset(args.test, seed=10**6, vocab=args.vocab, keypoints=args.keypoints)

    class Stop(Exception):
        pass

    def after(epoch, best):
        ckpt.write(folder, ckpt.state(epoch, model.weights, {"t": opt.t, "m": opt.m, "v": opt.v}, best, history, 2, "run", fp))
        if epoch == stop_after:
            raise Stop

    try:
        best = train.fit(
            model,
            opt,
            lambda w, e, s: [sh.grad(w, e, s, 4) for sh in shards],
            5,
            epochs,
            lambda w: core.wer([s.glosses for s in test], [model.decode(s.frames) for s in test]),
            lambda epoch, loss, value, secs: history.append(value),
            start=saved["epoch"] if saved else 0,
            best=ckpt.best_of(saved) if saved else None,
            after_epoch=after,
        )
    except Stop:
        return None
    return model.weights, history, best


@settings(max_examples=4, deadline=None)
@given(st.integers(1, 3))
def test_a_run_resumed_from_its_checkpoint_ends_as_the_undisturbed_run(tmp_path_factory, stop_after):
    whole = _synthetic(4, tmp_path_factory.mktemp("whole"))
    folder = tmp_path_factory.mktemp("broken")
    assert _synthetic(4, folder, stop_after=stop_after) is None
    assert json.loads((folder / "checkpoint.json").read_text())["epoch"] == stop_after
    resumed = _synthetic(4, folder, resume=True)
    assert resumed == whole  # the same weights, per-epoch WER history and best epoch, bit for bit


def test_train_py_refuses_a_checkpoint_of_other_settings_before_touching_ray(tmp_path, monkeypatch, capsys):
    ckpt.write(tmp_path, {"format": 1, "fingerprint": "0" * 16})
    monkeypatch.setattr(train.ray, "init", lambda *a, **k: pytest.fail("ray.init called"))
    assert train.main(["--backend", "python", "--checkpoint-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"train.py: {tmp_path}/checkpoint.json: made with other training settings") and "--checkpoint-dir" in err


@pytest.mark.parametrize("bad", ["-1", "x"])
def test_checkpoint_every_takes_whole_numbers_from_zero(bad, capsys):
    assert train.parse(["--checkpoint-every", "0"]).checkpoint_every == 0
    with pytest.raises(SystemExit) as exc:
        train.parse(["--checkpoint-every", bad])
    assert exc.value.code == 2 and "--checkpoint-every" in capsys.readouterr().err


def test_node_loss_errors_exit_for_a_retry_and_the_codes_own_do_not():
    import ray.exceptions as rex

    assert issubclass(rex.ActorDiedError, train.NODE_LOSS) and issubclass(rex.OwnerDiedError, train.NODE_LOSS)
    assert not issubclass(ValueError, train.NODE_LOSS) and not issubclass(rex.RayTaskError, train.NODE_LOSS)
    from cslr import jobs

    assert train.RETRY_EXIT == jobs.RETRY_EXIT and train.RESUMED_MARK == jobs.RESUMED_MARK


def test_a_call_to_an_unavailable_worker_is_sent_again_for_a_while_then_given_up():
    import ray.exceptions as rex

    tries = []

    def call():
        tries.append(1)
        if len(tries) < 3:
            raise rex.ActorUnavailableError("restarting", b"x" * 16)
        return "ok"

    now = [0.0]
    assert train.patiently(call, 10, sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0]) == "ok" and len(tries) == 3

    def never():
        raise rex.ActorUnavailableError("restarting", b"x" * 16)

    with pytest.raises(rex.ActorUnavailableError):
        train.patiently(never, 10, sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0])

    def dead():
        tries.append(1)
        raise rex.ActorDiedError()

    tries.clear()
    with pytest.raises(rex.ActorDiedError):
        train.patiently(dead, 10, sleep=lambda s: None, clock=lambda: 0.0)
    assert len(tries) == 1  # a dead worker is not waited for: the job's retry takes over


def test_only_a_retry_or_a_named_folder_resumes():
    assert ckpt.resumes({"CSLR_ATTEMPT": "2"}, False) and ckpt.resumes({}, True)
    # A first attempt under a run id used before (the stack re-created, the workspace kept) starts afresh.
    assert not ckpt.resumes({"CSLR_ATTEMPT": "1"}, False) and not ckpt.resumes({}, False)


@given(st.text(max_size=40))
def test_the_mlflow_filter_quotes_any_run_key_or_refuses_it(key):
    # The run key comes from `inv submit --name` or the environment: a quote must never end the
    # filter's string early (a key that would needs no search: no such run was tagged).
    query = ckpt.mlflow_filter(key)
    if query is None:
        assert not key or any(c in key for c in "'\\`")
    else:
        assert query == f"tags.`cslr.run_id` = '{key}'" and not any(c in key for c in "'\\`")


def test_a_retry_without_a_local_checkpoint_and_without_mlflow_starts_afresh(tmp_path, monkeypatch, capsys):
    """No MLFLOW_TRACKING_URI: nothing to fetch from, the folder stays empty (train.py then starts afresh)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("CSLR_RUN_ID", "run-1")
    assert train.fetch_from_mlflow(tmp_path / "ck", "exp") is None
    assert not (tmp_path / "ck").exists()
