"""The fit plan: fit groups and their content keys, training windows, tasks, the plan shared by a run's stages (pure)."""
