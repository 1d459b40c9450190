"""Django adoption: add `"aiassist.integrations.django"` to INSTALLED_APPS.

The service is set up once when Django is ready (settings from `AIASSIST_*` variables,
overridden by an optional `AIASSIST = {...}` dict in the Django settings); views then call
`AIAssistService.instance().decide(...)` where they decide. Nothing else changes.
"""
