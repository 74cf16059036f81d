"""opentelemetry.sdk: see opentelemetry/__init__.py."""
