"""APScheduler triggers from a job's schedule; also gives any node the next fire time.

An interval is anchored at the moment the job was configured, so every node (and a
backup taking over) computes the same fire times instead of counting from its own start.
"""

from __future__ import annotations

from datetime import datetime

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from contracts.v1.events import JobSchedule


def build_trigger(schedule: JobSchedule, anchor: datetime) -> BaseTrigger | None:
    """None: the job only runs when asked. Raises ValueError for a bad cron expression."""
    if schedule.cron:
        return CronTrigger.from_crontab(schedule.cron)
    if schedule.interval_s:
        return IntervalTrigger(seconds=schedule.interval_s, start_date=anchor)
    return None


def next_fire(schedule: JobSchedule, anchor: datetime, now: datetime) -> datetime | None:
    try:
        trigger = build_trigger(schedule, anchor)
    except ValueError:
        return None
    if trigger is None:
        return None
    fire: datetime | None = trigger.get_next_fire_time(None, now)
    return fire
