from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings

from aiassist.sdk import AIAssistService


class AIAssistConfig(AppConfig):  # type: ignore[misc]
    name = "aiassist.integrations.django"
    label = "aiassist"
    verbose_name = "aiassist"

    def ready(self) -> None:
        AIAssistService.setup(**getattr(settings, "AIASSIST", {}))
