"""opentelemetry.sdk.metrics: a provider that provides nothing."""


class MeterProvider:
    def __init__(self, *args, **kwargs):
        pass
