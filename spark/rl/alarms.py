"""Alarms on a run's health: a step's metric past a set bound prints one line, when it starts to hold.

Entropy collapsing (every rollout the same) or exploding (the policy drifting to noise), and the sampler's
log-probs drifting from the trainer's (which makes the rollouts off-policy), are the usual first signs of a run
going wrong; a line in the log names the step and the value, and `alarm/NAME` is 1 in the metrics while it holds.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Alarm:
    """`metric` below (`above` False) or above `bound`; `setting` is the config key that set the bound."""

    name: str
    metric: str
    bound: float
    above: bool
    setting: str

    def holds(self, value: float) -> bool:
        """Whether the metric's value is past the bound."""
        return value > self.bound if self.above else value < self.bound


class Alarms:
    """The alarms whose bound is set (0 = off), and which of them held at the last step checked."""

    def __init__(self, alarms: list[Alarm]):
        self.alarms = [alarm for alarm in alarms if alarm.bound]
        self.holding: set[str] = set()

    def check(self, step: int, metrics: dict[str, float], show: bool = True) -> dict[str, float]:
        """`alarm/NAME` (1 or 0) for each alarm set whose metric the step has; prints a line for each that holds
        now and did not at its previous check (`show`: this process prints), so an alarm that stays on prints once.
        A step without the metric (no update) leaves its alarm as it was."""
        state = {}
        for alarm in self.alarms:
            if alarm.metric not in metrics:
                continue
            value = metrics[alarm.metric]
            holds = alarm.holds(value)
            state[f"alarm/{alarm.name}"] = float(holds)
            if holds and alarm.name not in self.holding and show:
                side = "above" if alarm.above else "below"
                print(f"step {step}: alarm {alarm.name}: {alarm.metric} = {value:.4g} is {side} {alarm.setting} = "
                      f"{alarm.bound:g}", flush=True)
            (self.holding.add if holds else self.holding.discard)(alarm.name)
        return state
