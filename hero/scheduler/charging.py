"""Who pays for the inference: each loop iteration's CPU time split among the requests it served.

The inference's CPU time is charged to the agents in full: each request's
own sampling and admission (prompt reuse) as measured, and everything else a
step cost (the decode on every compute thread, the Python around it) split
among its requests by the tokens each put in the batch. Charges reach the
ledger in batches (every `CHARGE_EVERY_NS` while requests run, and whenever
the batch empties), not once per step.

Inference thread only, like the batcher that feeds it.
"""

from __future__ import annotations

import logging
import time

from hero.scheduler.job import Job
from hero.seams.power import Metering

log = logging.getLogger("hero.llm")

CHARGE_EVERY_NS = 250_000_000  # flush a running request's CPU time to the ledger this often


class StepCharges:
    """This iteration's measured and batched shares per request, and what each agent owes the ledger."""

    def __init__(self, metering: Metering | None) -> None:
        self.metering = metering
        self._direct: dict[Job, int] = {}  # this iteration's CPU measured for one request (admission, sampling)
        self._weights: dict[Job, int] = {}  # this iteration's tokens per request in the batch
        self._ended: list[Job] = []  # requests that left in this iteration
        self._pending: dict[str, list[int]] = {}  # agent -> [cpu ns, tokens] not yet charged
        self._carried_ns = 0  # CPU of an iteration that served nobody: the next request's
        self._charged_at = time.perf_counter_ns()

    @property
    def sequences(self) -> int:
        """Requests with tokens in this iteration's batch."""
        return len(self._weights)

    def measured(self, job: Job, cpu_ns: int) -> None:
        """CPU time spent for `job` alone (its admission, its sampling)."""
        self._direct[job] = self._direct.get(job, 0) + cpu_ns

    def batched(self, job: Job) -> None:
        """`job` put one token in this iteration's batch."""
        self._weights[job] = self._weights.get(job, 0) + 1

    def ended(self, job: Job) -> None:
        self._ended.append(job)

    def generated(self, agent_id: str) -> None:
        """One token generated for the agent (the ledger counts them beside the CPU time)."""
        self._pending.setdefault(agent_id, [0, 0])[1] += 1

    def settle(self, cpu_ns: int, *, idle: bool) -> None:
        """Share `cpu_ns` (never negative), what the inference cost since the last call, among the requests
        served meanwhile: what was measured for one request is its own, the rest is split by batch tokens.
        Charged to the ledger when due, or at once if the batch is now `idle`."""
        cpu_ns += self._carried_ns
        self._carried_ns = 0
        direct, weights = self._direct, self._weights
        if not weights:  # no decode: admissions, or requests that stopped before their step
            weights = dict.fromkeys(direct or self._ended, 1)
        shares = dict(direct)
        rest = max(0, cpu_ns - sum(direct.values()))
        total = sum(weights.values())
        if total:
            for job, n in weights.items():
                shares[job] = shares.get(job, 0) + rest * n // total
        else:
            self._carried_ns = rest
        pending = self._pending
        for job, ns in shares.items():
            job.cpu_ns += ns
            entry = pending.setdefault(job.agent_id, [0, 0])
            entry[0] += ns
        self._direct, self._weights, self._ended = {}, {}, []
        now = time.perf_counter_ns()
        if idle or now - self._charged_at >= CHARGE_EVERY_NS:
            self._charge_pending(now)

    def flush(self) -> None:
        """Charge what is owed now (the model is going away)."""
        self._charge_pending(time.perf_counter_ns())

    def _charge_pending(self, now: int) -> None:
        pending, self._pending, self._charged_at = self._pending, {}, now
        if self.metering is not None:
            for agent_id, (ns, tokens) in pending.items():
                if ns or tokens:
                    charge(self.metering, agent_id, ns, tokens)


def charge(metering: Metering, agent_id: str, cpu_ns: int, tokens: int) -> None:
    """Charge the ledger; a fault there is logged and costs that charge only, never a reply."""
    try:
        metering.charge_llm(agent_id, cpu_ns, tokens)
    except Exception:
        log.exception("charging %s's inference to the ledger failed", agent_id)
