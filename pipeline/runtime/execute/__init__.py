"""Executing tasks: the Dask layer (dask/, the only importer of dask.distributed), the worker's
task function, the driver's child process and in-process runner, the train loop."""
