"""Loss and throughput of the training batches, per logging window and over the run."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import astuple, dataclass, fields

import torch


@dataclass
class Counts:
    """Sums over a span of training batches (one rank's, or every rank's once reduced).

    The field order is the order of the list that checkpoints written before the fields had names
    hold (``trainer_state.json``, ``position.window``): ``restore`` still reads that list."""

    loss: float = 0.0  # sum of the target tokens' losses (a token-weighted meter), or of the batches' mean losses
    batches: float = 0.0
    real_tokens: float = 0.0  # each token once (a causal summary is inside its input)
    samples: float = 0.0
    positions: float = 0.0  # token positions, padding included
    seconds: float = 0.0  # training time, time set aside excluded
    loss_tokens: float = 0.0  # target tokens the loss is summed over (0: not token-weighted; added 2026-12)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def add(self, other: Counts) -> None:
        for name in self.names():
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def reduced(self, accelerator) -> Counts:
        """Summed over ranks (a collective), time averaged over them: the one all-reduce, packed and
        unpacked here only."""
        packed = torch.tensor(astuple(self), dtype=torch.float64).to(accelerator.device)
        total = Counts(*accelerator.reduce(packed, reduction="sum").cpu().tolist())
        total.seconds /= accelerator.num_processes
        return total

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.names(), astuple(self)))

    @classmethod
    def read(cls, carried: dict | list) -> Counts:
        """From a checkpoint: the named form (``as_dict``) or the older list of 6 floats."""
        if isinstance(carried, dict):
            return cls(**{name: float(carried[name]) for name in cls.names() if name in carried})
        return cls(*map(float, carried))

    def mean_loss(self) -> float:
        return self.loss / self.loss_tokens if self.loss_tokens else self.loss / max(self.batches, 1.0)


class Meter:
    """Loss and throughput of the training batches, per logging window and over the run.

    ``weighted``: the loss of a batch is a SUM over its target tokens, given with their number
    (``add(batch, loss_sum, tokens)``), and the window's loss is the token mean (the supervised
    recipe, engine.TokenWeightedLoss); otherwise each batch's loss is a mean and the window's loss
    the mean of the batches' (the RL recipe).

    ``stats(values)`` adds a step's named statistics (the RL recipe's score, KL, ...: each already
    the same on every rank); the window logs each one's mean over the window's steps, and they
    travel in ``carry()`` like the counts.

    The loss sum, batch count and real-token count stay on the device (no host sync per batch);
    samples and token positions (padding included) are known on the host from the shapes. Time
    spent validating or checkpointing (inside ``aside()``) does not count as training time.
    ``window()``, ``carry()`` and ``run()`` are collectives: every rank calls them at the same steps.
    """

    def __init__(self, accelerator, family, weighted: bool = False):
        self.acc = accelerator
        self.family = family
        self.weighted = weighted
        zero = lambda: torch.zeros((), device=accelerator.device, dtype=torch.float64)  # noqa: E731
        self.loss, self.batches, self.real_tokens = zero(), zero(), zero()  # this window, on the device
        self.loss_tokens = zero()
        self.samples = self.positions = 0  # this window, on the host
        self.total = Counts()  # this rank's closed windows (loss and batches unused)
        self.stat_sums: dict[str, float] = {}  # this window's named statistics, summed over its steps
        self.stat_steps = 0
        self.started, self.paused = time.perf_counter(), 0.0

    def add(self, batch: dict, loss: torch.Tensor, tokens: torch.Tensor | None = None) -> None:
        self.loss += loss.detach()
        self.batches += 1
        if tokens is not None:
            self.loss_tokens += tokens
        real, positions = self.family.count(batch)  # each token once (a causal summary is inside its input)
        self.real_tokens += real
        examples = getattr(self.family, "examples", None)  # the RL recipe's counter has none: rows are samples
        self.samples += examples(batch) if examples else batch["input_ids"].shape[0]
        self.positions += positions

    def stats(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.stat_sums[name] = self.stat_sums.get(name, 0.0) + float(value)
        self.stat_steps += 1

    def _stat_means(self) -> dict[str, float]:
        means = {name: total / self.stat_steps for name, total in self.stat_sums.items()} if self.stat_steps else {}
        self.stat_sums, self.stat_steps = {}, 0
        return means

    @contextmanager
    def aside(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - start

    def _mine(self) -> Counts:
        """This rank's window so far (one host sync for the three device sums)."""
        loss, batches, real, tokens = torch.stack([self.loss, self.batches, self.real_tokens, self.loss_tokens]).cpu().tolist()
        seconds = time.perf_counter() - self.started - self.paused
        return Counts(loss, batches, real, float(self.samples), float(self.positions), seconds, tokens)

    def _close(self) -> Counts:
        """This rank's window (``_mine``), added to the run's totals; the next window starts."""
        mine = self._mine()
        mine.seconds = max(mine.seconds, 1e-9)
        self.total.add(mine)
        for sum_ in (self.loss, self.batches, self.real_tokens, self.loss_tokens):
            sum_.zero_()
        self.samples = self.positions = 0
        self.started, self.paused = time.perf_counter(), 0.0
        return mine

    def carry(self) -> dict[str, float]:
        """This logging window so far, summed over ranks (a collective), for a checkpoint: a run
        resumed between two logging steps then logs the same average as an uninterrupted one."""
        carried = self._mine().reduced(self.acc).as_dict()
        if self.stat_steps:
            carried.update(stats=dict(self.stat_sums), stat_steps=self.stat_steps)
        return carried

    def restore(self, carried: dict | list) -> None:
        """Continue the window ``carry()`` saved (or, from an older checkpoint, its list of 6 floats).
        A window saved before the loss was token-weighted holds a sum of batch means, which cannot
        be turned into token sums: its loss is left out (the window logged after such a resume
        averages the batches since the resume); its throughput counts are kept."""
        window = Counts.read(carried)
        if isinstance(carried, dict) and carried.get("stat_steps"):  # the same on every rank: not summed
            self.stat_sums, self.stat_steps = dict(carried["stats"]), int(carried["stat_steps"])
        if self.weighted and not window.loss_tokens:
            window.loss = window.batches = 0.0
        self.started -= window.seconds  # every rank: window time is averaged over ranks
        if self.acc.is_main_process:  # the sums over ranks are carried once
            for sum_, value in ((self.loss, window.loss), (self.batches, window.batches),
                                (self.real_tokens, window.real_tokens), (self.loss_tokens, window.loss_tokens)):
                sum_ += value
            self.samples, self.positions = int(window.samples), int(window.positions)

    def window(self) -> dict:
        t = self._close().reduced(self.acc)
        return {**self._stat_means(), "loss": t.mean_loss(), "tokens_per_s": t.real_tokens / t.seconds,
                "samples_per_s": t.samples / t.seconds, "real_token_share": t.real_tokens / max(t.positions, 1.0)}

    def run(self) -> dict:
        """Throughput of the training steps of this launch (a resumed run counts from where it
        resumed), validation and checkpoints excluded."""
        if self.samples:  # batches after the last logging step (a stop before total_steps)
            self._close()
        t = self.total.reduced(self.acc)
        seconds = max(t.seconds, 1e-9)
        return {"real_tokens": int(t.real_tokens), "token_positions": int(t.positions), "samples": int(t.samples),
                "seconds": round(seconds, 3), "real_tokens_per_s": round(t.real_tokens / seconds, 1),
                "samples_per_s": round(t.samples / seconds, 2), "real_token_share": round(t.real_tokens / max(t.positions, 1.0), 4)}
