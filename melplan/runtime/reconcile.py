"""Observe, decide, act: the pure part of the runtime selector's slow path (no torch, no I/O).

* **Observe**: :meth:`Health.observe` folds one :class:`Event` (a server went down, came up or
  joined) into a new immutable :class:`Health` snapshot.
* **Decide**: :func:`decide` looks at the health, the current plan (:class:`PlanView`), the re-plan
  history (:class:`ReplanState`) and the :class:`Policy`, and returns a :class:`Decision`: re-plan
  now (and without which servers), or when to look again.
* **Act** lives in :mod:`melplan.runtime.selector`, which calls the planner and the callbacks;
  :func:`placement_actions` turns an old placement into the list of start/stop actions.

Hysteresis (docs/selector.md):

* a failure of a server the plan uses counts only once it has lasted ``grace_s`` (a flap shorter
  than the grace period never triggers a re-plan; the fast path fails over at once regardless);
* a server that came back (or joined) counts as *recovered* only after it has stayed up for
  ``hold_down_s``; until then it is left out of any re-plan, unless the current plan already runs
  on it;
* re-plans are backed off: after a re-plan (successful or not) at time t the next one waits until
  ``t + backoff``; ``backoff`` starts at ``backoff_s`` and doubles (up to ``max_backoff_s``) for
  every re-plan that follows the previous one by less than ``backoff_reset_s``; ``max_replans``
  caps the total.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from melplan.core.catalog import Family
from melplan.core.errors import InputError

POLICIES = ("failover-only", "replan-after", "eager")
DEFAULT_POLICY = "replan-after"
EVENT_KINDS = ("down", "up", "join")


@dataclass(frozen=True)
class Policy:
    """When the selector re-plans.  Build one with :meth:`Policy.named`.

    ``failover-only`` never re-plans (the fast path still fails over); ``replan-after`` re-plans
    when a failure outlasts ``grace_s`` or a server has been back for ``hold_down_s``; ``eager``
    is ``replan-after`` with no grace and no hold-down (only the back-off limits it).
    """

    name: str = DEFAULT_POLICY
    grace_s: float = 300.0
    hold_down_s: float = 600.0
    backoff_s: float = 60.0
    max_backoff_s: float = 3600.0
    backoff_reset_s: float = 3600.0
    max_replans: int | None = None

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise InputError(f"unknown policy {self.name!r}", field="policy", fix=f"use one of: {', '.join(POLICIES)}")
        for key in ("grace_s", "hold_down_s", "backoff_s", "max_backoff_s", "backoff_reset_s"):
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise InputError(
                    f"{key} must be a finite number >= 0, got {v!r}",
                    field=key,
                    fix=f"set {key} to a number of seconds >= 0",
                )
        if self.max_backoff_s < self.backoff_s:
            raise InputError(
                f"max_backoff_s ({self.max_backoff_s}) is below backoff_s ({self.backoff_s})",
                field="max_backoff_s",
                fix="set max_backoff_s >= backoff_s",
            )
        if self.max_replans is not None and (
            isinstance(self.max_replans, bool) or not isinstance(self.max_replans, int) or self.max_replans < 0
        ):
            raise InputError(
                f"max_replans must be a whole number >= 0 or None, got {self.max_replans!r}",
                field="max_replans",
                fix="give a count, or None for no cap",
            )

    @classmethod
    def named(cls, name: str = DEFAULT_POLICY, **overrides: float | int | None) -> Policy:
        """The named policy with its defaults, then ``overrides`` (only the ones given, not None).

        Raises :class:`InputError` for an unknown name or field or a bad value.
        """
        if name not in POLICIES:
            raise InputError(f"unknown policy {name!r}", field="policy", fix=f"use one of: {', '.join(POLICIES)}")
        base = cls(name=name)
        if name == "eager":
            base = replace(base, grace_s=0.0, hold_down_s=0.0)
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(given) - set(cls.__dataclass_fields__) - {"name"})
        if unknown:
            raise InputError(
                f"unknown policy option(s) {unknown}",
                field="policy",
                fix=f"use: {', '.join(k for k in cls.__dataclass_fields__ if k != 'name')}",
            )
        return replace(base, **given)

    @property
    def replans(self) -> bool:
        return self.name != "failover-only"

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Event:
    """Something observed about one server at a time (seconds on the selector's clock)."""

    time: float
    kind: str  # "down" | "up" | "join"
    server: str


@dataclass(frozen=True)
class Health:
    """What is known about the servers: who is down since when, who came back (or joined) when.

    ``down_since`` holds exactly the servers that are down now.  ``up_since`` holds the servers that
    are up now *and* have a recorded recovery or join (servers never seen down are absent: they count
    as stable).  Treat both mappings as read-only; :meth:`observe` builds new ones.
    """

    down_since: Mapping[str, float] = field(default_factory=dict)
    up_since: Mapping[str, float] = field(default_factory=dict)

    @property
    def down(self) -> frozenset[str]:
        return frozenset(self.down_since)

    def is_down(self, server: str) -> bool:
        return server in self.down_since

    def observe(self, event: Event) -> Health:
        """The health after ``event`` (pure).  A repeated state (down while down) changes nothing,
        so the *first* report of a failure or recovery is the one that counts."""
        s = event.server
        if event.kind == "down":
            if s in self.down_since:
                return self
            down = dict(self.down_since)
            down[s] = event.time
            up = self.up_since
            if s in up:
                up = dict(up)
                del up[s]
            return Health(down, up)
        if event.kind in ("up", "join"):
            if s not in self.down_since and not (event.kind == "join" and s not in self.up_since):
                return self
            down = self.down_since
            if s in down:
                down = dict(down)
                del down[s]
            up = dict(self.up_since)
            up[s] = event.time
            return Health(down, up)
        raise ValueError(f"unknown event kind {event.kind!r}; expected one of {EVENT_KINDS}")

    def stable(self, server: str, now: float, hold_down_s: float) -> bool:
        """Up, and either never seen down or up for at least ``hold_down_s``."""
        if server in self.down_since:
            return False
        since = self.up_since.get(server)
        return since is None or now - since >= hold_down_s


@dataclass(frozen=True)
class PlanView:
    """What the decision needs to know about the current plan.

    ``used``: servers the current placement runs on; ``basis``: servers the current plan has
    accounted for (those it could use, and those that were down by coincidence, unused, when it was
    made); ``known``: every server the selector may place on (cluster plus joins).  A stable server
    outside the basis (one a plan lost, a recovering one, a new one) triggers a re-plan.
    """

    used: frozenset[str]
    basis: frozenset[str]
    known: frozenset[str]


@dataclass(frozen=True)
class ReplanState:
    """Re-plan history that drives the back-off and the cap."""

    last_at: float | None = None
    backoff_s: float = 0.0  # wait after last_at before the next re-plan
    count: int = 0  # re-plans attempted (successful or not)
    failures: int = 0

    def after(self, now: float, policy: Policy, *, ok: bool) -> ReplanState:
        """The state after a re-plan attempt at ``now`` (pure): doubles the back-off when the
        previous attempt was less than ``backoff_reset_s`` ago, else resets it."""
        if self.last_at is not None and now - self.last_at < policy.backoff_reset_s and self.backoff_s > 0:
            backoff = min(self.backoff_s * 2, policy.max_backoff_s)
        else:
            backoff = policy.backoff_s
        return ReplanState(now, backoff, self.count + 1, self.failures + (0 if ok else 1))


@dataclass(frozen=True)
class Decision:
    """The slow path's verdict at ``time``.

    ``replan``: re-plan now, without the servers in ``exclude``.  ``lost``: used servers down for
    longer than the grace period; ``gained``: servers back (or new) for longer than the hold-down
    and not considered by the current plan.  ``due_at``: when the verdict may change with no new
    event (a grace period, hold-down or back-off ends); None when nothing is pending.
    """

    time: float
    replan: bool
    reason: str
    lost: tuple[str, ...] = ()
    gained: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    due_at: float | None = None


def decide(health: Health, view: PlanView, state: ReplanState, policy: Policy, now: float) -> Decision:
    """Pure: should the selector re-plan at ``now``, and if not, when should it look again?"""
    if not policy.replans:
        return Decision(now, False, "policy failover-only never re-plans")
    if policy.max_replans is not None and state.count >= policy.max_replans:
        return Decision(now, False, f"re-plan cap reached ({state.count} of {policy.max_replans})")
    lost, pending = [], []
    for s in sorted(view.used):
        since = health.down_since.get(s)
        if since is None:
            continue
        if now - since >= policy.grace_s:
            lost.append(s)
        else:
            pending.append(since + policy.grace_s)
    gained = []
    for s in sorted(view.known - view.basis):
        if s in health.down_since:
            continue
        if health.stable(s, now, policy.hold_down_s):
            gained.append(s)
        else:
            pending.append(health.up_since[s] + policy.hold_down_s)
    earliest = -math.inf if state.last_at is None else state.last_at + state.backoff_s
    if lost or gained:
        why = "; ".join(
            p
            for p in (
                f"down past the {policy.grace_s:g} s grace: {', '.join(lost)}" if lost else "",
                f"back or new for {policy.hold_down_s:g} s: {', '.join(gained)}" if gained else "",
            )
            if p
        )
        if now < earliest:
            return Decision(
                now, False, f"backing off until t={earliest:g} s ({why})", tuple(lost), tuple(gained), due_at=earliest
            )
        exclude = tuple(
            sorted(
                s
                for s in view.known
                if s in health.down_since or (s not in view.used and not health.stable(s, now, policy.hold_down_s))
            )
        )
        return Decision(now, True, why, tuple(lost), tuple(gained), exclude, due_at=now)
    if pending:
        return Decision(
            now, False, "waiting for a grace period or hold-down to end", due_at=max(min(pending), earliest)
        )
    return Decision(now, False, "nothing to re-plan")


# -- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """Start or stop one component on one server.  ``bytes`` is the weight size a start moves."""

    verb: str  # "start" | "stop"
    component: str  # upstream name or combiner name (a subset key such as "u1+u2")
    server: str
    family: str
    bytes: int = 0

    def __str__(self) -> str:
        return f"{self.verb} {self.component} on {self.server}"

    def to_dict(self) -> dict:
        return {
            "action": str(self),
            "verb": self.verb,
            "component": self.component,
            "server": self.server,
            "family": self.family,
            "bytes": self.bytes,
        }


def placement_actions(
    old_family: Family, old: Mapping[str, Iterable[str]], new_family: Family, new: Mapping[str, Iterable[str]]
) -> tuple[Action, ...]:
    """The actions that turn ``old`` into ``new`` (pure): starts first (make before break), then
    stops, each sorted by server then component.  A component is identified by its family, name and
    server, so a change of family stops everything old and starts everything new."""

    def pairs(family: Family, placement: Mapping[str, Iterable[str]]) -> set[tuple[str, str, str]]:
        return {(family.id, comp, s) for comp, servers in placement.items() for s in servers}

    before, after = pairs(old_family, old), pairs(new_family, new)
    starts = sorted(after - before, key=lambda p: (p[2], p[1]))
    stops = sorted(before - after, key=lambda p: (p[2], p[1]))
    return tuple(Action("start", c, s, f, new_family.component(c).weight_bytes) for f, c, s in starts) + tuple(
        Action("stop", c, s, f, 0) for f, c, s in stops
    )
