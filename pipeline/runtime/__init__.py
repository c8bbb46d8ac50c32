"""Runtime layer: cluster plan, fit keys and tasks, the worker task function, fit cache,
cluster (the only Dask importer), progress store, logs, monitor."""
