"""Hardware profiles: the local profiler, datasheet presets and telemetry sampling."""
