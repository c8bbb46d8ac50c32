"""The Dask layer: the only package of qpipe that imports dask.distributed (tests/test_layers.py
checks it; runtime/ui/check.py only asks whether the dashboard's bokeh imports).

- `cluster.py` starts a LocalCluster sized by the probe's plan, or joins an existing cluster,
  and hands back a `ClusterHandle` (imports dask.distributed).
- `task_stream.py` streams a model's tasks to that cluster: a bounded number in flight, results
  as they complete, a lost worker or a task past its timeout turned into a failure record
  (imports dask.distributed).
- `settings.py` is what the study's cluster runs with (Dask config, worker environment, TLS
  files, the dashboard port) and `task_watch.py` what the stream learns about its tasks
  (memory kills, which tasks run, the quiet scheduler polls), `worker_stop.py` how it stops a
  worker (through its nanny, its other tasks sent back): none imports dask.distributed.

Everything else reaches Dask through these, lazily (runtime/execute/shared_cluster.py): a run
whose work is all cached or small enough for the driver's child never imports it.
"""
