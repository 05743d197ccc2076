"""A judging run over a file of pairs: concurrency, budget, resume, outputs and the summary.

- Pairs already labelled in the output file are skipped (the run is idempotent per pair id);
  labelled records are appended and flushed one by one, so a run stopped at any point resumes
  where it stopped. A second line with an id seen before in the input is skipped and counted.
- The unjudged file is rewritten by every run: each pair this run could not judge, as it was
  read, with `unjudged` (the reason) and `unjudged_kind`. It can be judged again as it is.
- Budget: `max_pairs` pairs sent to the judge, `max_cost` spent (checked before each pair is
  sent, so the pairs in flight may overshoot it by at most `concurrency - 1` pairs). Pairs
  beyond the budget are unjudged with kind `budget`.
- At most `concurrency` pairs are judged at a time; the input is read as they finish.
- A fatal judge error (401, 403, 404) stops the run: nothing more is sent.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from extproc.tuning.judge_client import JudgeClient
from extproc.tuning.judge_one import Plan, Result, judge_pair
from extproc.tuning.judge_pairs import Pair


@dataclass(frozen=True, slots=True)
class Budget:
    max_pairs: int | None = None
    max_cost: float | None = None
    #: price per million tokens of the judge model (input, output); None: unknown
    price: tuple[float, float] | None = None

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        if self.price is None:
            return 0.0
        return (tokens_in * self.price[0] + tokens_out * self.price[1]) / 1e6


@dataclass(slots=True)
class Summary:
    judge_model: str
    pairs: int = 0
    malformed: int = 0
    duplicates: int = 0
    already_judged: int = 0
    #: pairs sent to the judge
    sent: int = 0
    judged: int = 0
    unjudged: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    #: pairs sampled for the swap check; of them judged both ways; of those, in agreement
    swap_asked: int = 0
    swap_both: int = 0
    swap_agree: int = 0
    #: outcomes by the request's dominant script
    by_lang: dict[str, Counter[str]] = field(default_factory=dict)
    #: verdicts, and of them the ones where the answer shown first won (position bias)
    first_shown: int = 0
    first_won: int = 0
    #: HTTP requests to the judge (retries included) and the retries alone
    requests: int = 0
    retries: int = 0
    warnings: list[str] = field(default_factory=list)
    #: tokens the judge reported, and their cost (when `priced`)
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    priced: bool = False
    #: why the run stopped early ("" when it did not)
    stopped: str = ""
    seconds: float = 0.0

    def add(self, result: Result, budget: Budget) -> None:
        self.requests += result.requests
        self.tokens_in += result.tokens_in
        self.tokens_out += result.tokens_out
        self.cost += budget.cost(result.tokens_in, result.tokens_out)
        self.first_shown += len(result.first_won)
        self.first_won += sum(result.first_won)
        self.swap_asked += result.swap_asked
        if result.consistent is not None:
            self.swap_both += 1
            self.swap_agree += result.consistent
        if result.record is None:
            kind = result.unjudged[0] if result.unjudged else "judge_error"
            self.unjudged[kind] += 1
            return
        self.judged += 1
        outcome = result.record["evidence"]["outcome"]
        self.outcomes[outcome] += 1
        self.labels[result.record["label"]] += 1
        self.by_lang.setdefault(result.lang or "none", Counter())[outcome] += 1

    def as_json(self) -> dict[str, Any]:
        judged = self.judged
        return {
            "pairs": self.pairs,
            "malformed_lines": self.malformed,
            "duplicate_ids": self.duplicates,
            "already_judged": self.already_judged,
            "sent": self.sent,
            "judged": judged,
            "unjudged": dict(sorted(self.unjudged.items())),
            "cheap_tier": {k: self.outcomes.get(k, 0) for k in ("win", "tie", "loss")}
            | {"loss_rate": _share(self.outcomes.get("loss", 0), judged)},
            "by_lang": {
                lang: {k: c.get(k, 0) for k in ("win", "tie", "loss")}
                | {"loss_rate": _share(c.get("loss", 0), c.total())}
                for lang, c in sorted(self.by_lang.items())
            },
            "labels": dict(sorted(self.labels.items())),
            "swap": {
                "asked": self.swap_asked,
                "judged_both_ways": self.swap_both,
                "agreement": _share(self.swap_agree, self.swap_both),
                "first_shown_won": _share(self.first_won, self.first_shown),
            },
            "judge": {
                "model": self.judge_model,
                "requests": self.requests,
                "retries": self.retries,
                "tokens_in": self.tokens_in,
                "tokens_out": self.tokens_out,
                "cost": round(self.cost, 6) if self.priced else None,
            },
            "stopped": self.stopped or None,
            "seconds": round(self.seconds, 3),
            "warnings": self.warnings,
        }


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


Progress = Callable[[Summary, bool], None]


@dataclass
class JudgeRun:
    client: JudgeClient
    plan: Plan
    budget: Budget
    concurrency: int
    done_ids: set[str]
    labelled: IO[bytes]
    unjudged: IO[bytes]
    progress: Progress | None = None
    summary: Summary = field(init=False)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.summary = Summary(self.plan.judge_model, priced=self.budget.price is not None)
        self._seen: set[str] = set()

    def run(self, pairs: Iterable[Pair]) -> Summary:
        started = time.monotonic()
        stop = self.client.stop
        pending: set[Future[Result]] = set()
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="judge") as pool:
            for pair in pairs:
                if not self._admit(pair):
                    continue
                reason = self._refuse(pair)
                if reason is not None:
                    self._unjudged(pair, *reason)
                    continue
                self.summary.sent += 1
                pending.add(pool.submit(judge_pair, self.client, pair, self.plan))
                while len(pending) >= self.concurrency:
                    pending = self._collect(pending, FIRST_COMPLETED)
            while pending:
                pending = self._collect(pending, FIRST_COMPLETED)
        stop.set()
        self.client.close()
        self.summary.retries = self.client.retries
        self.summary.seconds = time.monotonic() - started
        if self.progress:
            self.progress(self.summary, True)
        return self.summary

    def _admit(self, pair: Pair) -> bool:
        self.summary.pairs += 1
        if pair.id in self._seen:
            self.summary.duplicates += 1
            return False
        self._seen.add(pair.id)
        if pair.id in self.done_ids:
            self.summary.already_judged += 1
            return False
        return True

    def _refuse(self, pair: Pair) -> tuple[str, str] | None:
        """Why a pair is not sent to the judge (missing side, budget, stopped), or None."""
        missing = pair.missing_reason()
        if missing is not None:
            return ("missing_side", missing)
        if self.summary.stopped:
            return ("stopped", self.summary.stopped)
        if self.budget.max_pairs is not None and self.summary.sent >= self.budget.max_pairs:
            return ("budget", f"over budget: --max-pairs {self.budget.max_pairs}")
        if self.budget.max_cost is not None and self.summary.cost >= self.budget.max_cost:
            return ("budget", f"over budget: --max-cost {self.budget.max_cost:g}")
        return None

    def _collect(self, pending: set[Future[Result]], how: str) -> set[Future[Result]]:
        done, rest = wait(pending, timeout=1.0, return_when=how)
        for future in done:
            result = future.result()
            self.summary.add(result, self.budget)
            if result.record is not None:
                self.labelled.write(orjson.dumps(result.record) + b"\n")
                self.labelled.flush()
            else:
                kind, reason = result.unjudged or ("judge_error", "no verdict")
                self._write_unjudged(result.pair, kind, reason)
            if result.fatal and not self.summary.stopped:
                reason = result.unjudged[1] if result.unjudged else "fatal judge error"
                self.summary.stopped = f"stopped after a fatal judge error: {reason}"
                self.client.stop.set()
        if self.progress:
            self.progress(self.summary, False)
        return rest

    def _unjudged(self, pair: Pair, kind: str, reason: str) -> None:
        self.summary.unjudged[kind] += 1
        self._write_unjudged(pair, kind, reason)

    def _write_unjudged(self, pair: Pair, kind: str, reason: str) -> None:
        line = dict(pair.data) | {"unjudged": reason, "unjudged_kind": kind}
        self.unjudged.write(orjson.dumps(line) + b"\n")


class ProgressLine:
    """`judged 120 · unjudged 3 · cheap loss 12.5 % · cost 0.0123 · 4.2 pairs/s` on stderr:
    redrawn in place on a terminal, else one line every `every` seconds."""

    def __init__(self, stream: IO[str], *, total: int | None, every: float = 5.0) -> None:
        self.stream = stream
        self.total = total
        self.every = every
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.last = 0.0
        self.lock = threading.Lock()

    def __call__(self, summary: Summary, final: bool) -> None:
        now = time.monotonic()
        if not final and not self.tty and now - self.last < self.every:
            return
        self.last = now
        done = summary.judged + summary.unjudged.total()
        of = f"/{self.total}" if self.total else ""
        loss = summary.outcomes.get("loss", 0)
        rate = f"{100 * loss / summary.judged:.1f} %" if summary.judged else "-"
        cost = f" · cost {summary.cost:.4f}" if summary.priced else ""
        speed = done / max(now - self.started, 1e-9)
        line = (
            f"judge: {done}{of} · judged {summary.judged} · unjudged {summary.unjudged.total()}"
            f" · cheap loss {rate}{cost} · {speed:.1f} pairs/s"
        )
        with self.lock:
            if self.tty:
                self.stream.write("\r" + line + ("\n" if final else ""))
            else:
                self.stream.write(line + "\n")
            self.stream.flush()
