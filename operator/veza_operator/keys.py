"""Rolling the JWT signing key of a platform in stages no worker can fall behind.

The kubelet updates a mounted Secret up to its sync period (about a minute) after the Secret
changes, and at a different moment on each node, so a rotation never makes a key sign before
every worker can know it, nor drops a key while a token it signed may still be valid:

1. publish: a new key joins the Secret (`jwks.json`: it verifies) but does not sign yet;
2. activate, `propagation` later: it comes first in `signing-keys.json` and signs; the key it
   replaces keeps verifying;
3. retire, `propagation + overlap` after the activation: the replaced key leaves the Secret, once
   the last token it signed (on a replica that saw the switch last) has expired.

The schedule of every key (published, activates, retires) is written into the Secret with the keys
(annotation `veza.io/key-schedule`), so an operator restarted mid-rotation resumes where it was.
A rotation is due `period` after the signer started signing, or when the platform's annotation
`veza.io/rotate-keys` takes a new value (`veza keys rotate`).

Pure functions over the schedule first; `roll_keys` is the thin step the platform's reconcile runs.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter

from veza_core import keys as jwt_keys

from .controller import WRITES, Context, Key, post_event
from .kube import ApiError
from .models import VezaPlatformSpec

log = logging.getLogger("veza.operator")

ROTATIONS = Counter("veza_operator_key_rotations_total", "Signing-key rotation stages carried out", ["stage"])
for _stage in ("published", "activated", "retired"):
    ROTATIONS.labels(_stage)

DEFAULT_PROPAGATION = 120  # seconds; models.KeyRotation.propagationSeconds
RETRY_SECONDS = 30.0  # after a failed step (a malformed Secret, a refused write)


def stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_stamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


@dataclass(frozen=True)
class KeyTimes:
    """When a key joined the Secret, signs from, and leaves it (None: not decided yet)."""

    kid: str
    published: datetime
    activates: datetime
    retires: datetime | None = None

    def state(self, now: datetime) -> str:
        """retired, published (verifies, does not sign yet) or activated (signs, or did and verifies)."""
        if self.retires is not None and now >= self.retires:
            return "retired"
        return "published" if now < self.activates else "activated"

    def to_json(self) -> dict[str, str]:
        out = {"kid": self.kid, "published": stamp(self.published), "activates": stamp(self.activates)}
        if self.retires is not None:
            out["retires"] = stamp(self.retires)
        return out


@dataclass(frozen=True)
class Schedule:
    """Every key of the Secret with its times, and the last rotation request carried out."""

    keys: tuple[KeyTimes, ...]
    request: str | None = None

    def signer(self, now: datetime) -> KeyTimes | None:
        """The key that signs at `now`: the latest activated one still in the set."""
        active = [k for k in self.keys if k.activates <= now and k.state(now) != "retired"]
        return max(active, key=lambda k: k.activates) if active else None

    def state(self, key: KeyTimes, now: datetime) -> str:
        """What a key does at `now`: published, signing, verifying (after it signed) or retired."""
        state = key.state(now)
        if state == "activated":
            return "signing" if key is self.signer(now) else "verifying"
        return state

    def pending(self, now: datetime) -> KeyTimes | None:
        return next((k for k in self.keys if k.activates > now), None)

    def to_json(self) -> str:
        body: dict[str, Any] = {"keys": [k.to_json() for k in self.keys]}
        if self.request is not None:
            body["request"] = self.request
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        body = json.loads(text)
        return cls(keys=tuple(KeyTimes(k["kid"], parse_stamp(k["published"]), parse_stamp(k["activates"]),
                                       parse_stamp(k["retires"]) if k.get("retires") else None)
                              for k in body.get("keys") or []),
                   request=body.get("request"))

    @classmethod
    def adopt(cls, kids: list[str], now: datetime, retire_after: timedelta) -> Schedule:
        """A schedule for keys found without one (a Secret from before rotation, or made by hand): the first
        signs, the others verify for one more overlap."""
        return cls(keys=tuple(KeyTimes(kid, now, now, None if i == 0 else now + retire_after)
                              for i, kid in enumerate(kids)))


@dataclass(frozen=True)
class Timing:
    """The spec's rotation times, as durations."""

    period: timedelta | None
    overlap: timedelta
    propagation: timedelta

    @classmethod
    def of(cls, spec: VezaPlatformSpec) -> Timing:
        rotation = spec.auth.keyRotation
        period = rotation.periodSeconds if rotation else None
        propagation = rotation.propagationSeconds if rotation else DEFAULT_PROPAGATION
        return cls(period=timedelta(seconds=period) if period else None,
                   overlap=timedelta(seconds=spec.auth.key_overlap_seconds),
                   propagation=timedelta(seconds=propagation))


@dataclass(frozen=True)
class Stage:
    """One step a rotation took: its Event's reason and message, its metric's label."""

    name: str  # published | activated | retired
    reason: str
    message: str


@dataclass(frozen=True)
class Step:
    schedule: Schedule
    private_keys: list[dict[str, Any]]  # signer first, as signing-keys.json holds them
    stages: list[Stage] = field(default_factory=list)


def next_rotation(schedule: Schedule, timing: Timing, now: datetime) -> datetime | None:
    """When the next key is due to be published by the period (None: on demand only, or one is pending)."""
    signer = schedule.signer(now)
    if timing.period is None or signer is None or schedule.pending(now) is not None:
        return None
    return signer.activates + timing.period


def next_change(schedule: Schedule, timing: Timing, now: datetime) -> datetime | None:
    """The next moment the Secret must change: an activation, a retirement or a periodic rotation."""
    times = [k.activates for k in schedule.keys if k.activates > now]
    times += [k.retires for k in schedule.keys if k.retires is not None]
    due = next_rotation(schedule, timing, now)
    if due is not None:
        times.append(due)
    return min(times, default=None)


def ordered(schedule: Schedule, private: dict[str, dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """The private keys still in the set, the signer first (the API signs with the first)."""
    signer = schedule.signer(now)
    rest = [k for k in schedule.keys if k is not signer]
    return [private[k.kid] for k in ([signer] if signer else []) + rest if k.kid in private]


def advance(schedule: Schedule, private_keys: list[dict[str, Any]], timing: Timing, now: datetime, *,
            request: str | None = None,
            generate: Callable[[], dict[str, Any]] = jwt_keys.generate_signing_key) -> Step:
    """The keys and schedule at `now`, and the stages reached since `schedule` was written.

    `request` is the platform's rotation request: a value other than the schedule's last one starts a
    rotation now (a key already pending answers it).
    """
    private = {str(k["kid"]): k for k in private_keys}
    written_signer = str(private_keys[0]["kid"]) if private_keys else None  # first in the Secret as written
    known = tuple(k for k in schedule.keys if k.kid in private)
    stages = [Stage("retired", "KeyRetired", f"Key {k.kid} retired: tokens it signed are refused.")
              for k in known if k.state(now) == "retired"]
    keys = tuple(k for k in known if k.state(now) != "retired")
    schedule = replace(schedule, keys=keys)
    signer = schedule.signer(now)
    if signer is not None and written_signer is not None and signer.kid != written_signer:
        until = "; ".join(f"{k.kid} verifies until {stamp(k.retires)}" for k in keys
                          if k.retires is not None and schedule.state(k, now) == "verifying")
        stages.insert(0, Stage("activated", "KeyActivated",
                               f"Key {signer.kid} signs from now" + (f"; {until}." if until else ".")))

    signer = schedule.signer(now)
    wanted = request is not None and request != schedule.request
    due = next_rotation(schedule, timing, now)
    if signer is None or wanted or (due is not None and now >= due):
        if schedule.pending(now) is None:
            new = generate()
            activates = now + timing.propagation if signer is not None else now  # nothing signs yet: at once
            retires = activates + timing.propagation + timing.overlap
            keys = tuple(replace(k, retires=retires) if k is signer else k for k in keys)
            published = KeyTimes(str(new["kid"]), now, activates)
            schedule = replace(schedule, keys=(*keys, published))
            private[published.kid] = new
            stages.append(Stage("published", "KeyPublished",
                                f"Key {published.kid} published: it verifies now and signs from "
                                f"{stamp(activates)}" + (f"; {signer.kid} verifies until {stamp(retires)}."
                                                         if signer is not None else ".")))
        if wanted:
            schedule = replace(schedule, request=request)
    return Step(schedule, ordered(schedule, private, now), stages)


def key_status(schedule: Schedule, timing: Timing, now: datetime) -> dict[str, Any]:
    """status.keys of the platform: what signs, what verifies, and when the next change comes."""
    signer = schedule.signer(now)
    upcoming, change = next_rotation(schedule, timing, now), next_change(schedule, timing, now)
    # Every field always set ("" for none): the status is merge-patched, and a field left out would stay.
    return {
        "active": signer.kid if signer else "",
        "keys": [{**k.to_json(), "state": schedule.state(k, now)} for k in schedule.keys],
        "request": schedule.request or "",
        "nextRotation": stamp(upcoming) if upcoming else "",
        "nextChange": stamp(change) if change else "",
    }


# -- the Secret ---------------------------------------------------------------------------------


def secret_payload(private_keys: list[dict[str, Any]], schedule: Schedule) -> tuple[dict[str, str], dict[str, str]]:
    """The Secret's data (base64) and annotations for the keys, signer first, and their schedule."""
    data = {name: base64.b64encode(text.encode()).decode()
            for name, text in jwt_keys.secret_data(private_keys).items()}
    return data, {jwt_keys.SCHEDULE_ANNOTATION: schedule.to_json()}


def read_secret(secret: dict[str, Any], timing: Timing, now: datetime) -> tuple[Schedule, list[dict[str, Any]]]:
    """The schedule and private keys a keys Secret holds.

    Keys found without a schedule, or other keys than it names (someone replaced them by hand), are
    adopted as they are: the hand edit wins, never the schedule.
    """
    raw = (secret.get("data") or {}).get(jwt_keys.SIGNING_KEYS_FILE)
    private: list[dict[str, Any]] = json.loads(base64.b64decode(raw))["keys"] if raw else []
    kids = [str(k["kid"]) for k in private]
    text = ((secret.get("metadata") or {}).get("annotations") or {}).get(jwt_keys.SCHEDULE_ANNOTATION)
    if text:
        try:
            schedule = Schedule.from_json(text)
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable key schedule: adopting the keys as they are",
                        extra={"secret": (secret.get("metadata") or {}).get("name")})
        else:
            if sorted(k.kid for k in schedule.keys) == sorted(kids):
                return schedule, private
            log.warning("the keys differ from their schedule: adopting them as they are",
                        extra={"secret": (secret.get("metadata") or {}).get("name")})
    return Schedule.adopt(kids, now, timing.propagation + timing.overlap), private


def rotation_wanted(spec: VezaPlatformSpec, request: str | None, previous: dict[str, Any] | None,
                    now: datetime, *, spec_changed: bool) -> bool:
    """Whether the reconcile must read the keys Secret: a rotation is configured or asked for and the
    status does not know the schedule yet (or the spec changed: its times may have), the request is new,
    or the status's next change is due."""
    previous = previous or {}
    if not previous or spec_changed:
        return spec.auth.keyRotation is not None or request is not None or bool(previous)
    if request is not None and request != previous.get("request"):
        return True
    change = previous.get("nextChange")
    return change is not None and parse_stamp(change) <= now


async def roll_keys(ctx: Context, key: Key, body: dict[str, Any], spec: VezaPlatformSpec, secret_name: str,
                    previous: dict[str, Any] | None, *, spec_changed: bool = False,
                    now: datetime | None = None) -> dict[str, Any] | None:
    """Carry the platform's key rotation forward; returns status.keys (None: nothing to say yet).

    Reads the Secret only when something is due (the status holds the next change), writes it only when
    a stage is reached (optimistic concurrency on its resourceVersion: an edit in between makes the step
    run again a second later), and asks for a reconcile at the next change. A failed step holds back
    only the keys, never the rest of the platform's reconcile.
    """
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    timing = Timing.of(spec)
    request = ((body.get("metadata") or {}).get("annotations") or {}).get(jwt_keys.ROTATE_ANNOTATION)
    if not rotation_wanted(spec, request, previous, now, spec_changed=spec_changed):
        _requeue_at(ctx, key, (previous or {}).get("nextChange"), now)
        return previous or None
    try:
        secret = await ctx.client.get("Secret", key[1], secret_name)
        if secret is None:
            return previous or None
        schedule, private = read_secret(secret, timing, now)
        step = advance(schedule, private, timing, now, request=request)
        if step.schedule != schedule or [k["kid"] for k in step.private_keys] != [k["kid"] for k in private] \
                or not ((secret.get("metadata") or {}).get("annotations") or {}).get(jwt_keys.SCHEDULE_ANNOTATION):
            data, annotations = secret_payload(step.private_keys, step.schedule)
            await ctx.client.apply({"apiVersion": "v1", "kind": "Secret",
                                    "metadata": {"name": secret_name, "namespace": key[1],
                                                 "annotations": annotations,
                                                 "resourceVersion": secret["metadata"]["resourceVersion"]},
                                    "data": data})
            WRITES.labels("Secret", "apply").inc()
    except (ApiError, ValueError, KeyError, TypeError) as exc:
        # The rest of the platform's reconcile goes on (its workers, its status): only the keys wait.
        # A conflict (someone wrote the Secret meanwhile) is tried again at once, the rest a little later.
        conflict = isinstance(exc, ApiError) and exc.status == 409
        if not conflict:
            log.warning("signing keys: rotation step failed", extra={"platform": key[2], "error": repr(exc)})
        ctx.requeue(key, 1.0 if conflict else RETRY_SECONDS)
        return previous or None
    for stage in step.stages:  # each written above: a stage comes with a change of the Secret
        ROTATIONS.labels(stage.name).inc()
        log.info("signing keys: stage done", extra={"platform": key[2], "stage": stage.name,
                                                    "detail": stage.message})
        await post_event(ctx, body, "Normal", stage.reason, stage.message)
    status = key_status(step.schedule, timing, now)
    _requeue_at(ctx, key, status.get("nextChange"), now)
    return status


def _requeue_at(ctx: Context, key: Key, when: str | None, now: datetime) -> None:
    if when:
        # A second late, so the stage is due when the reconcile runs (the schedule counts whole seconds).
        ctx.requeue(key, max(0.0, (parse_stamp(when) - now).total_seconds()) + 1.0)
