from django.apps import AppConfig


class CoreConfig(AppConfig):
    """Plumbing every layer may use: errors, SQL statement helpers, batching and the per-loop
    registry, the Redis clients, text checks, client addresses, REST helpers. No models; it
    imports nothing from `apps.*` or `chatproject` (docs/architecture.md)."""

    name = "apps.core"
    label = "core"
