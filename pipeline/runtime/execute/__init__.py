"""Executing tasks: the Dask cluster (the only importer of dask.distributed), the worker's task function, the driver's child process, the train loop."""
