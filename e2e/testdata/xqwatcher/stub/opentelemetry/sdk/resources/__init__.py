"""opentelemetry.sdk.resources: a resource that holds nothing."""


class Resource:
    @staticmethod
    def create(*args, **kwargs):
        return Resource()
