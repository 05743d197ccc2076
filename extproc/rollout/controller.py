"""`cascade canary`: step the classifier canary 10 -> 50 -> 100 %, roll back on a trigger.

The controller reads the canary's health from Prometheus's HTTP API (instant queries,
`prometheus`), and changes the weight through a `WeightTarget` (`target`: `canary.weight` in the
config file that the servers hot-reload, edited in place and replaced atomically).

Every check, step and rollback is logged with the figures behind it.

Rules (`canary.rollout` in the config, docs/resilience.md):
- a trigger *holds* while its query, over its `window_s`, is above `above` and the canary served
  at least `min_requests` in that window; once it has held for `for_s` seconds the canary goes
  to 0 % at once and the run ends (exit 1);
- a query that returns nothing (metric or label missing, 0/0) is "no data": it neither holds
  nor blocks;
- after `step_interval_s` at a step, with Prometheus answering, no trigger holding and at least
  `min_requests` canary requests during the step, the weight moves to the next step; after the
  last step has been held as long, the rollout is complete (exit 0), optionally promoting the
  canary to stable.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from string import Template

from extproc.config.snapshot import Rollout, Trigger
from extproc.rollout.prometheus import Prometheus, PrometheusError
from extproc.rollout.target import WeightTarget

logger = logging.getLogger(__name__)

EXIT_COMPLETE = 0
EXIT_ROLLED_BACK = 1


@dataclass
class Figure:
    """One trigger at one check."""

    trigger: Trigger
    value: float | None = None
    volume: float | None = None
    #: seconds the condition has held so far (None: not holding)
    held: float | None = None
    note: str = ""

    def describe(self) -> str:
        if self.note:
            return f"{self.trigger.name}={self.note}"
        value = "n/a" if self.value is None else f"{self.value:.4g}"
        text = f"{self.trigger.name}={value} (limit {self.trigger.above:g}"
        if self.held is not None:
            text += f", above for {self.held:.0f}s of {self.trigger.for_s}s"
        return text + ")"


@dataclass
class Check:
    time: float
    weight: float
    figures: list[Figure] = field(default_factory=list)
    #: Prometheus answered every query
    complete: bool = True
    fired: Figure | None = None

    def describe(self) -> str:
        return ", ".join(f.describe() for f in self.figures)


@dataclass
class Event:
    """What the controller did, for logs and tests."""

    action: str  # start | check | step | rollback | complete | promote
    weight_from: float
    weight_to: float
    check: Check | None
    message: str


class RolloutController:
    def __init__(
        self,
        policy: Rollout,
        version: str,
        target: WeightTarget,
        prometheus: Prometheus,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.policy = policy
        self.version = version
        self.target = target
        self.prometheus = prometheus
        self.clock = clock
        self.sleep = sleep
        self.events: list[Event] = []
        self._on_event = on_event
        self._since: dict[str, float] = {}

    # -- queries ------------------------------------------------------------------------------

    def _promql(self, query: str, window_s: float) -> str:
        window = f"{max(1, math.ceil(window_s))}s"
        return Template(query).safe_substitute(version=self.version, window=window)

    def check(self, weight: float) -> Check:
        now = self.clock()
        result = Check(time=now, weight=weight)
        volumes: dict[int, float | None] = {}
        for trigger in self.policy.triggers:
            figure = Figure(trigger)
            result.figures.append(figure)
            try:
                if self.policy.min_requests > 0:
                    if trigger.window_s not in volumes:
                        volumes[trigger.window_s] = self.prometheus.query(
                            self._promql(self.policy.volume_query, trigger.window_s)
                        )
                    figure.volume = volumes[trigger.window_s]
                figure.value = self.prometheus.query(self._promql(trigger.query, trigger.window_s))
            except PrometheusError as exc:
                logger.warning("canary %s: %s", self.version, exc)
                result.complete = False
                figure.note = "prometheus error"
                self._since.pop(trigger.name, None)
                continue
            if self.policy.min_requests > 0 and (figure.volume or 0) < self.policy.min_requests:
                figure.note = (
                    f"n/a ({figure.volume or 0:.0f} of {self.policy.min_requests} requests)"
                )
                self._since.pop(trigger.name, None)
                continue
            if figure.value is None:
                figure.note = "no data"
                self._since.pop(trigger.name, None)
                continue
            if figure.value > trigger.above:
                since = self._since.setdefault(trigger.name, now)
                figure.held = now - since
                if figure.held >= trigger.for_s and result.fired is None:
                    result.fired = figure
            else:
                self._since.pop(trigger.name, None)
        return result

    def _canary_volume(self, window_s: float) -> float | None:
        try:
            return self.prometheus.query(self._promql(self.policy.volume_query, window_s))
        except PrometheusError as exc:
            logger.warning("canary %s: %s", self.version, exc)
            return None

    # -- the loop -----------------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        self.events.append(event)
        logger.info("%s", event.message)
        if self._on_event is not None:
            self._on_event(event)

    def run(self, *, promote: bool = False, max_checks: int | None = None) -> int:
        """Run the rollout to its end; EXIT_COMPLETE or EXIT_ROLLED_BACK."""
        steps = self.policy.steps
        weight = self.target.current()
        name = f"canary {self.version}"
        if weight < steps[0]:
            self.target.set(steps[0])
            self._emit(Event("start", weight, steps[0], None, f"{name}: start at {steps[0]:g}%"))
            weight = steps[0]
        else:
            self._emit(Event("start", weight, weight, None, f"{name}: resume at {weight:g}%"))
        index = max(i for i, step in enumerate(steps) if step <= weight)
        step_started = self.clock()
        checks = 0
        while max_checks is None or checks < max_checks:
            checks += 1
            result = self.check(weight)
            figures = result.describe()
            if result.fired is not None:
                self.target.set(0)
                fired = result.fired
                self._emit(
                    Event(
                        "rollback",
                        weight,
                        0,
                        result,
                        f"{name}: ROLLBACK {weight:g}% -> 0%: {fired.trigger.name} "
                        f"{fired.value:.4g} > {fired.trigger.above:g} for "
                        f"{fired.held:.0f}s; figures: {figures}",
                    )
                )
                return EXIT_ROLLED_BACK
            at_step = result.time - step_started
            pending = [f.trigger.name for f in result.figures if f.held is not None]
            ready = at_step >= self.policy.step_interval_s and result.complete and not pending
            volume: float | None = None
            if ready and self.policy.min_requests > 0:
                volume = self._canary_volume(at_step)
                ready = volume is not None and volume >= self.policy.min_requests
            if ready and index == len(steps) - 1:
                self._emit(
                    Event(
                        "complete",
                        weight,
                        weight,
                        result,
                        f"{name}: rollout complete at {weight:g}% after {at_step:.0f}s; "
                        f"figures: {figures}",
                    )
                )
                if promote:
                    self.target.promote()
                    self._emit(
                        Event(
                            "promote",
                            weight,
                            0,
                            result,
                            f"{name}: promoted to stable; the previous stable is now a 0% canary",
                        )
                    )
                return EXIT_COMPLETE
            if ready:
                index += 1
                self.target.set(steps[index])
                self._emit(
                    Event(
                        "step",
                        weight,
                        steps[index],
                        result,
                        f"{name}: step {weight:g}% -> {steps[index]:g}% after {at_step:.0f}s "
                        f"healthy; figures: {figures}",
                    )
                )
                weight = steps[index]
                step_started = self.clock()
            else:
                why = (
                    "holding: " + ", ".join(pending)
                    if pending
                    else "prometheus incomplete"
                    if not result.complete
                    else f"waiting for traffic: {volume or 0:.0f} of "
                    f"{self.policy.min_requests} canary requests at this step"
                    if volume is not None
                    else f"{at_step:.0f}s of {self.policy.step_interval_s}s"
                )
                self._emit(
                    Event(
                        "check", weight, weight, result, f"{name}: {weight:g}% ({why}); {figures}"
                    )
                )
            if max_checks is not None and checks >= max_checks:
                break  # the last check allowed: no wait for a check that will not come
            self.sleep(self.policy.check_interval_s)
        raise TimeoutError(f"no decision after {max_checks} checks")


def describe_once(controller: RolloutController, weight: float) -> tuple[list[str], bool]:
    """`--once`: the figures of one check, one line per trigger, and whether every query
    answered (a check Prometheus could not answer says nothing about the canary)."""
    result = controller.check(weight)
    return [f.describe() for f in result.figures], result.complete
