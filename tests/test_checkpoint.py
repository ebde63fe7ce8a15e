"""The save-on-stop step shared by the training loops (checkpoint.StopRequested.save_and_exit)."""

import os
import signal

import jax.numpy as jnp
import pytest

from rlaif_jax.checkpoint import StageCheckpoints, StopRequested


class _Closable:
    closed = False

    def close(self):
        self.closed = True


@pytest.mark.parametrize("just_saved", [False, True])
def test_sigterm_saves_the_step_once_closes_and_exits_143(tmp_path, just_saved):
    ckpts = StageCheckpoints(tmp_path / "ckpt", keep=2, async_save=True)
    saves = []

    def save(step):
        saves.append(step)
        ckpts.save(step, {"params": {"w": jnp.ones(3)}}, {"step": step})

    bar, writer = _Closable(), _Closable()
    with StopRequested() as stop:
        stop.save_and_exit(ckpts, save, 3, saved=False, close=(bar, writer))  # no signal yet
        assert saves == [] and not bar.closed
        if just_saved:
            save(5)
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(SystemExit) as info:
            stop.save_and_exit(ckpts, save, 5, saved=just_saved, close=(bar, writer))
    assert info.value.code == 128 + signal.SIGTERM
    assert saves == [5] and bar.closed and writer.closed
    assert ckpts.all_steps() == [5]  # waited for: the step is complete on disk
    ckpts.close()
