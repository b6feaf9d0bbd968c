"""Load generation: schedules, the async runner, workers and the results recorder."""
