"""On the fly (issue 14): follow an acquisition folder and run a workflow as its data complete.

- ``scanner``: polls the folder (network filesystems: no inotify); a movie is complete when its
  size has been stable for ``settle_s`` and it decodes; mdocs are re-read when they change.
- ``completeness``: per series, which tilts are in, which wait, when the series is complete (all
  expected tilts, the next series started, or quiet for ``quiet_s`` with >= ``min_fraction``).
- ``snapshot``: the accepted tilts of a series as an mdoc of their own (plus links to the movies),
  read with the import step's reader: per-tilt parameters and each series batch's import agree.
- ``tilt_cache``: per-tilt motion + CTF results (the motion-ctf step's per-movie task), kept under
  ``<project>/watch/tilts``; a ``CachingExecutor`` hands them to the step's runs, so the
  series-level motion-ctf run recomputes nothing.
- ``series_runs``: per series batch, the workflow relabelled ``<step>:<tsId>`` (``:r2``... when a
  late tilt reopened it), run with ``run_workflow(resume=True)``: finished runs are reused,
  interrupted ones resumed — a restart anywhere recomputes nothing.
- ``loop``: the watch loop; ``status``: the terminal block and ``watch/state.json``.
"""
