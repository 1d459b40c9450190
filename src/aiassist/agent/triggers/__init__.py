"""Triggers start flows and agent runs from outside: a schedule, a webhook, an inbound email.

Each trigger turns what happened into an `Event` and hands it to a `Starter`, the one
callable that knows how to run things (in-process, or on Celery workers). Triggers know
nothing of flows; flows know nothing of triggers.
"""

from aiassist.agent.triggers.base import Event, Starter
from aiassist.agent.triggers.cron import CronScheduler, Overlap, Schedule
from aiassist.agent.triggers.email import EmailTrigger, InboundEmail
from aiassist.agent.triggers.webhook import Webhook, webhook_router

__all__ = [
    "CronScheduler",
    "EmailTrigger",
    "Event",
    "InboundEmail",
    "Overlap",
    "Schedule",
    "Starter",
    "Webhook",
    "webhook_router",
]
