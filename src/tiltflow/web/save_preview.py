"""What the viewer's Save would create, read-only, for its dialog; and where a Save went.

The name is the first free one of ``workflow.curation.subset_name_for`` on the run that made the
set, as ``save_subset`` picks it. Only the store's read API is used; Save itself chooses the name when it
writes, so another writer may take this one first: the page then shows what Save returns.
"""

from __future__ import annotations

from pathlib import Path

from tiltflow.web.models import SavePreview, SaveResult
from tiltflow.workflow.curation import apply_exclusions, exclusions, subset_name_for
from tiltflow.workflow.errors import InputError
from tiltflow.workflow.sets import CtfSeriesSet, TiltSeries, TiltSeriesSet
from tiltflow.workflow.store import OutputRecord, ProjectStore


def next_subset_name(store: ProjectStore, output: OutputRecord) -> str:
    """The name Save would give the subset of ``output`` now (see the module's docstring)."""
    return store.first_free_name(output.run_id, subset_name_for(output))


def save_preview(store: ProjectStore, output: OutputRecord) -> SavePreview:
    """The output Save would register for ``output`` with the viewer's current exclusions."""
    value = apply_exclusions(store.load(output), exclusions(store, output))
    if not isinstance(value, (TiltSeriesSet, CtfSeriesSet)):
        raise InputError(f"{output.pointer}: a {output.type} cannot be curated")
    name = next_subset_name(store, output)
    run = store.run(output.run_id)
    kept = [s for s in value.items if s.enabled]
    items = [im for s in kept for im in (s.images if isinstance(s, TiltSeries) else s.items)]
    folder = store.relpath(store.run_dir(run.id) / name) if isinstance(value, TiltSeriesSet) else None
    return SavePreview(
        pointer=f"{run.id}.{name}",
        name=name,
        run_id=run.id,
        step=run.step,
        restack_folder=folder,
        n_series=len(kept),
        n_excluded_series=len(value.items) - len(kept),
        n_excluded_items=sum(not it.enabled for it in items),
    )


def save_result(store: ProjectStore, new: OutputRecord) -> SaveResult:
    """The response to Save: the output it registered, and the folder of its new stacks when re-stacked."""
    folder = None
    if new.attrs.get("restacked"):
        value = store.load(new)
        parents = {Path(im.file).parent for s in value.items for im in getattr(s, "images", [])}
        if len(parents) == 1:
            folder = store.relpath(parents.pop())
    return SaveResult(
        pointer=new.pointer,
        name=new.name,
        type=new.type,
        summary=new.summary,
        run_id=new.run_id,
        step=store.run(new.run_id).step,
        folder=folder,
    )
