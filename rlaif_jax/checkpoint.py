"""Orbax checkpoints of a training stage, and a SIGTERM guard that saves before exiting.

A stage's checkpoints live in `<workdir>/checkpoints/<stage>/<step>/`, one orbax item per train-state
entry (params, opt_state, loop counters and PRNG key) plus `meta` (JSON: data position, config fingerprint,
anything the stage wants to read back). Saves are asynchronous by
default; orbax writes to a temporary directory and renames it when complete, so a run killed
mid-save resumes from the last complete checkpoint.
"""

from __future__ import annotations

import logging
import pathlib
import signal

import jax
import orbax.checkpoint as ocp


class StageCheckpoints:
    """Periodic, keep-N checkpoints of one stage.

    The state is a dict of pytrees (e.g. params, opt_state, loop={step, rng}); each key is saved
    as its own orbax item, so a later stage can restore just `params` without materialising the
    optimizer state.
    """

    META = "meta"

    def __init__(self, directory: pathlib.Path, keep: int, async_save: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        self._mngr = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mngr.all_steps())

    def save(self, step: int, state: dict, meta: dict) -> None:
        """Starts saving `state` at `step` (returns once arrays are copied off-device when async)."""
        items = {k: ocp.args.StandardSave(v) for k, v in state.items()}
        items[self.META] = ocp.args.JsonSave(meta)
        self._mngr.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, step: int, abstract_state: dict) -> dict:
        """Restores the items named in `abstract_state` (ShapeDtypeStructs with shardings)."""
        items = {k: ocp.args.StandardRestore(v) for k, v in abstract_state.items()}
        out = self._mngr.restore(step, args=ocp.args.Composite(**items))
        return {k: out[k] for k in abstract_state}

    def restore_meta(self, step: int) -> dict:
        out = self._mngr.restore(step, args=ocp.args.Composite(**{self.META: ocp.args.JsonRestore()}))
        return out[self.META]

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.close()


def abstract_with_shardings(tree, shardings):
    """ShapeDtypeStructs that tell orbax the dtype, shape and placement to restore into."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class StopRequested:
    """Context manager: SIGTERM/SIGINT set `.requested` instead of killing the process.

    The training loop checks the flag between steps, saves a checkpoint and exits, so a
    preempted job loses no work. A second signal while stopping falls back to the default action.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested is not None:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        self.requested = signum
        logging.warning("Received %s: saving a checkpoint and stopping after this step",
                        signal.Signals(signum).name)

    def __enter__(self):
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def save_and_exit(self, ckpts: StageCheckpoints, save, done: int, saved: bool,
                      unit: str = "step", close=()) -> None:
        """Call after each step: nothing unless a stop was requested; then saves step `done`
        with `save(done)` (unless `saved`: the loop just did), waits for the save, closes
        `close` (progress bar, metric writer), logs how to resume and raises
        SystemExit(128 + signal number), the exit status of a process killed by that signal."""
        if self.requested is None:
            return
        if not saved:
            save(done)
        ckpts.wait()
        for thing in close:
            thing.close()
        logging.warning("Stopped at %s %d; rerun the same command to resume.", unit, done)
        raise SystemExit(128 + self.requested)
