"""Read Scipion's exported workflow JSON (a list of protocols) into a tiltflow workflow and its plan.

Scipion writes each protocol with ``object.className``, ``object.id`` (a string), form parameters
(enums as integer indices) and pointers ``"<id>.<outputName>"``. Templates may carry description
lines before the JSON array and ``~Title|default|type|alias~`` / ``%(ENV)s`` fields; those are
expanded before this module sees the list.

Nothing is dropped silently: the plan (:class:`PlanEntry`, one per protocol, in dependency order)
says what each protocol became — a workflow step, folded into the step that consumes it — or why
not: out of scope (with the export that hands over to the tool that does it), not a tiltflow step,
unknown, or its input not mapped. A protocol that is not run but takes and gives the same kind of
set (tilt series in, tilt series out) hands its input on to its consumers (the nearest mapped
ancestor feeds them), and the plan says so. The mapping itself is :mod:`tiltflow.workflow.scipion_map`;
an import in streaming becomes the watch mode (:mod:`tiltflow.workflow.scipion_streaming`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from tiltflow.workflow.errors import InputError
from tiltflow.workflow.scipion_map import PROTOCOLS, Extra, ProtocolMap, register_protocol  # noqa: F401
from tiltflow.workflow.scipion_plan import PlanEntry, format_plan  # noqa: F401
from tiltflow.workflow.scipion_scope import (
    KIND_WORDS,
    NOT_A_STEP,
    is_subset_name,
    out_of_scope,
    output_kind,
)

_POINTER = re.compile(r"^(\d+)\.([A-Za-z_]\w*)$")
_BEAD_KEYS = {
    "ProtImodFiducialModel": "fiducialDiameter",
    "ProtImodBRT": "fidSize",
    "ProtImodFiducialEraser": "fidDiameter",
}


@dataclass
class _Feed:
    """What a pointer resolves to: one of our outputs, with what travels along it."""

    pointer: str
    source: str  # Scipion id of the step making it
    carried: dict[str, tuple[Any, str]] = field(default_factory=dict)  # param -> (value, folded origin)
    carried_inputs: dict[str, tuple[str, str]] = field(default_factory=dict)
    ctx: dict[str, Any] = field(default_factory=dict)  # lineage: pixel_size_a, binning, binned
    via: list[str] = field(default_factory=list)  # protocols not run on the way
    folds: list[str] = field(default_factory=list)  # folded protocols on the way
    otype: str = ""  # our output type (TiltSeries ...)

    def copy(self) -> _Feed:
        return _Feed(
            self.pointer,
            self.source,
            dict(self.carried),
            dict(self.carried_inputs),
            dict(self.ctx),
            list(self.via),
            list(self.folds),
            self.otype,
        )


@dataclass
class _Node:
    state: str  # "step" | "fold" | "pass" (not run, transparent) | "none" (not run)
    cls: str
    why: str = ""
    feed: _Feed | None = None
    by_kind: dict[str, str] = field(default_factory=dict)  # output kind -> "sid.Output"
    types: dict[str, str] = field(default_factory=dict)  # "sid.Output" -> its type
    named: dict[str, str] = field(default_factory=dict)  # Scipion output name -> "sid.Output"
    pending: dict[str, tuple[Any, str]] = field(default_factory=dict)
    pending_inputs: dict[str, tuple[str, str]] = field(default_factory=dict)
    ctx: dict[str, Any] = field(default_factory=dict)
    inputs: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _Placement:
    """A protocol being placed: its id, class, map and form; its own parameters, the feeds of its
    inputs, the lineage along the main input, the inputs not mapped (why), notes and plan entry."""

    pid: str
    cls: str
    mapping: ProtocolMap
    proto: dict[str, Any]
    own: dict[str, Any]
    feeds: dict[str, _Feed]
    ctx: dict[str, Any]
    missing: dict[str, str]
    notes: list[str]
    entry: PlanEntry


def _pointers(proto: dict[str, Any], ids: set[str]) -> dict[str, tuple[str, str]]:
    """Form field -> (protocol id, output name) for each pointer to a protocol of the workflow."""
    found = {}
    for key, value in proto.items():
        if isinstance(value, str) and not key.startswith(("_", "object.")):
            m = _POINTER.match(value.strip())
            if m and m.group(1) in ids:
                found[key] = (m.group(1), m.group(2))
    return found


def _in_dependency_order(protocols: list[dict[str, Any]], ids: set[str]) -> list[dict[str, Any]]:
    """Scipion lists protocols in creation order, which is not always the order they depend on."""
    by_id = {str(p.get("object.id")): p for p in protocols}
    placed: list[dict[str, Any]] = []
    seen: set[str] = set()

    def visit(pid: str, stack: tuple[str, ...]) -> None:
        if pid in seen or pid not in by_id or pid in stack:
            return
        for head, _ in _pointers(by_id[pid], ids).values():
            visit(head, stack + (pid,))
        seen.add(pid)
        placed.append(by_id[pid])

    for proto in protocols:
        visit(str(proto.get("object.id")), ())
    return placed


def _with_compose(protocols: list[dict[str, Any]], ids: set[str]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """ProtImportMovies -> motion correction -> ProtComposeTS: the import learns ComposeTS's mdocs.
    Returns copies of the protocols and ComposeTS id -> ProtImportMovies id."""
    protocols = [dict(p) for p in protocols]
    by_id = {str(p.get("object.id")): p for p in protocols}
    composed = {}
    for compose in (p for p in protocols if p.get("object.className") == "ProtComposeTS"):
        for head, _ in _pointers(compose, ids).values():
            for up, _ in _pointers(by_id[head], ids).values():
                if by_id[up].get("object.className") == "ProtImportMovies":
                    by_id[up]["_compose"] = compose
                    composed[str(compose.get("object.id"))] = up
    return protocols, composed


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class _Builder:
    def __init__(self, protocols: list[dict[str, Any]]):
        from tiltflow.workflow.steps.base import all_steps

        self.known = all_steps()
        self.ids = {str(p.get("object.id")) for p in protocols}
        self.protocols, self.composed = _with_compose(protocols, self.ids)
        self.by_id = {str(p.get("object.id")): p for p in self.protocols}
        self.nodes: dict[str, _Node] = {}
        self.entries: list[PlanEntry] = []
        self.steps: list = []
        self.absorbed: dict[str, dict[str, list[str]]] = {}  # folded id -> step id -> what it took
        self.fed: dict[str, list[str]] = {}  # id not run -> step ids fed past it
        self.refs: dict[str, set[str]] = {}  # id -> kinds of its outputs that are used
        for p in self.protocols:
            for head, out in _pointers(p, self.ids).values():
                self.refs.setdefault(head, set()).add(output_kind(out))
        beads = [
            p.get(_BEAD_KEYS[str(p.get("object.className"))])
            for p in self.protocols
            if p.get("object.className") in _BEAD_KEYS
        ]
        self.bead_nm = next((float(b) for b in beads if b), None)

    # --- pointers ------------------------------------------------------------------------------
    def resolve(self, head: str, out: str, depth: int = 0) -> _Feed | str:
        node = self.nodes.get(head)
        if node is None:
            return f"protocol {head} comes later or not at all"
        kind = output_kind(out)
        if node.state == "step":
            target = node.named.get(out) or node.by_kind.get(kind)
            if target is None and kind == "other" and len(set(node.by_kind.values())) == 1:
                target = next(iter(node.by_kind.values()))
            if target is None:
                return f"{head} ({node.cls}) makes no {KIND_WORDS[kind]} in tiltflow"
            sid, _, ours = target.partition(".")
            tilt = kind == "tiltseries"
            return _Feed(
                f"{sid}.{out}" if is_subset_name(out, ours) else target,
                head,
                dict(node.pending) if tilt else {},
                dict(node.pending_inputs) if tilt else {},
                dict(node.ctx),
                otype=node.types.get(target, ""),
            )
        if node.state == "fold" and node.feed is not None:
            return node.feed.copy()
        if node.state == "pass" and depth < 100:
            for up, up_out in node.inputs:
                if output_kind(up_out) == kind:
                    found = self.resolve(up, up_out, depth + 1)
                    if isinstance(found, _Feed):
                        found.via.append(head)
                    return found
        return f"{head} ({node.cls}) is not run ({node.why})"

    def _nearest_step(self, pid: str, kind: str) -> str | None:
        """The nearest ancestor run as a step, preferring one that makes ``kind`` (tomograms for a picker,
        tilt series for subtomogram averaging)."""
        queue, seen, found = [h for h, _ in _pointers(self.by_id[pid], self.ids).values()], set(), []
        while queue:
            head = queue.pop(0)
            if head in seen:
                continue
            seen.add(head)
            node = self.nodes.get(head)
            if node and node.state == "fold" and node.feed is not None:
                head, node = node.feed.source, self.nodes.get(node.feed.source)
            if node and node.state == "step":
                if kind in node.by_kind:
                    return node.by_kind[kind].partition(".")[0]
                found.append(head)
            queue += [h for h, _ in _pointers(self.by_id[head], self.ids).values()]
        return found[0] if found else None

    # --- one protocol --------------------------------------------------------------------------
    def place(self, proto: dict[str, Any]) -> None:
        cls, pid = str(proto.get("object.className") or ""), str(proto.get("object.id"))
        entry = PlanEntry(cls, pid, proto.get("object.label"), None, "")
        self.entries.append(entry)
        pointers = _pointers(proto, self.ids)
        mapping = PROTOCOLS.get(cls)
        if mapping is None:
            scope = out_of_scope(cls)
            if scope is not None:
                nearest = self._nearest_step(pid, scope[2])
                run = (
                    f"RUN = the run of workflow step {nearest} ({self._step_of(nearest)})"
                    if nearest
                    else "RUN = the tiltflow run that made its input"
                )
                entry.kind, entry.reason = (
                    "out of scope",
                    f"out of scope ({scope[0]}): hand over with {scope[1]}; {run}",
                )
                self.nodes[pid] = _Node("none", cls, why="out of scope")
            else:
                why = NOT_A_STEP.get(cls, "unknown protocol: not a tiltflow step")
                self.nodes[pid] = _Node("pass", cls, why=why, inputs=list(pointers.values()))
                entry.reason = why
            return
        if mapping.variant is not None:
            mapping = mapping.variant(proto, self.refs.get(pid, set())) or mapping
        if cls == "ProtImportMovies" and not proto.get("_compose"):
            entry.reason = "single-particle movies: no ProtComposeTS groups them into tilt series"
            self.nodes[pid] = _Node("none", cls, why="single-particle movies")
            return
        notes: list[str] = []
        if mapping.step is not None and mapping.step not in self.known:
            if mapping.fallback is None:
                why = f"tiltflow has no '{mapping.step}' step in this version"
                self.nodes[pid] = _Node("pass", cls, why=why, inputs=list(pointers.values()))
                entry.reason = why
                return
            notes.append(f"tiltflow has no '{mapping.step}' step in this version")
            mapping = mapping.fallback
        feeds: dict[str, _Feed] = {}
        missing: dict[str, str] = {}
        specs = {spec.name: spec for spec in self.known[mapping.step].inputs} if mapping.step else {}
        for s_name, our in mapping.inputs.items():
            if s_name in pointers and our not in feeds:
                found = self.resolve(*pointers[s_name])
                if isinstance(found, _Feed) and our in specs and found.otype not in specs[our].types:
                    found = (
                        f"{found.source} ({self.nodes[found.source].cls}) gives {found.otype}; "
                        f"{mapping.step} takes {' or '.join(specs[our].types)}"
                    )
                if isinstance(found, str):
                    missing.setdefault(our, found)
                else:
                    feeds[our] = found
                    missing.pop(our, None)
        required = [our for our in missing if our == "input" or (our in specs and not specs[our].optional)]
        if mapping.inputs and "input" not in feeds and "input" not in missing:
            missing["input"] = "it names no protocol of this workflow"
            required.insert(0, "input")
        if required:
            entry.reason = "input not mapped: " + missing[required[0]]
            self.nodes[pid] = _Node("none", cls, why="input not mapped")
            return
        main = feeds.get("input")
        ctx: dict[str, Any] = dict(main.ctx) if main else {"binning": 1, "binned": 1}
        if not mapping.inputs and proto.get("samplingRate"):
            ctx["pixel_size_a"] = float(proto["samplingRate"])
        notes += [f"{our} not mapped: {why}" for our, why in missing.items()]
        own = {ours: proto[s] for s, ours in mapping.params.items() if proto.get(s) is not None}
        placing = _Placement(pid, cls, mapping, proto, own, feeds, ctx, missing, notes, entry)
        if mapping.step is None:
            self._fold(placing)
        else:
            self._step(placing, mapping.step)

    def _convert(
        self, mapping: ProtocolMap, proto: dict, params: dict, ctx: dict, missing: dict, notes: list[str]
    ) -> tuple[dict[str, Any], float]:
        params = {
            **params,
            "_pixel_size_a": ctx.get("pixel_size_a"),
            "_binning": ctx.get("binning", 1),
            "_binned": ctx.get("binned", 1),
            "_bead_diameter_nm": self.bead_nm,
            "_missing": set(missing),
        }
        if mapping.convert is not None:
            mapping.convert(proto, params)
        notes += params.get("_notes", [])
        scale = float(params.get("_scale", 1) or 1)
        return {k: v for k, v in params.items() if not k.startswith("_")}, scale

    def _only_fields(self, step_id: str, params: dict[str, Any], notes: list[str]) -> dict[str, Any]:
        fields = self.known[step_id].params.model_fields
        for key in [k for k in params if k not in fields]:
            value = params.pop(key)
            if value not in (None, False, "", [], 0):
                notes.append(f"not translated: {key}={_shown(value)} (no such {step_id} parameter)")
        return params

    def _absorb(self, origin: str, sid: str, what: str | None) -> None:
        taken = self.absorbed.setdefault(origin, {}).setdefault(sid, [])
        if what and what not in taken:
            taken.append(what)

    def _fold(self, p: _Placement) -> None:
        pid, ctx = p.pid, p.ctx
        main = p.feeds["input"]
        params, _ = self._convert(p.mapping, p.proto, p.own, ctx, p.missing, p.notes)
        carried = dict(main.carried)
        carried.update({k: (v, pid) for k, v in params.items()})
        carried_inputs = dict(main.carried_inputs)
        carried_inputs.update({our: (f.pointer, pid) for our, f in p.feeds.items() if our != "input"})
        binning = int(params.get("binning") or 1)
        if binning > 1:  # Scipion's stack is binned, tiltflow's is not (yet)
            ctx["binning"] = ctx.get("binning", 1) * binning
            if ctx.get("pixel_size_a"):
                ctx["pixel_size_a"] *= binning
        feed = _Feed(
            main.pointer, main.source, carried, carried_inputs, ctx, list(main.via), main.folds + [pid], main.otype
        )
        self.nodes[pid] = _Node("fold", p.cls, feed=feed)
        p.entry.kind = "folded"
        p.entry.reason = "; ".join(p.notes)  # completed in finish()

    def _note_feeds(self, p: _Placement) -> None:
        """The folded protocols each input passes absorb into this one; protocols not run are noted."""
        for our, f in p.feeds.items():
            for origin in f.folds:
                self._absorb(origin, p.pid, None)
            if f.via:
                for skipped in f.via:
                    self.fed.setdefault(skipped, []).append(p.pid)
                names = ", ".join(f"{v} ({self.nodes[v].cls})" for v in f.via)
                p.notes.append(f"{our} from {f.source} ({self.nodes[f.source].cls}): {names} not run")

    def _take_carried(self, p: _Placement, step_id: str, node: _Node, inputs: dict[str, str]) -> dict[str, Any]:
        """What travels along the main input: the parameters (returned) and inputs (added to
        ``inputs``) the step takes; the rest waits on ``node`` for a step further down."""
        step = self.known[step_id]
        fields, accepts = set(step.params.model_fields), {spec.name for spec in step.inputs}
        params: dict[str, Any] = {}
        main = p.feeds.get("input")
        if main is None:
            return params
        for key, (value, origin) in main.carried.items():
            if key in fields:
                params[key] = value
                self._absorb(origin, p.pid, key)
            else:
                node.pending[key] = (value, origin)
        for key, (ptr, origin) in main.carried_inputs.items():
            if key in accepts and key not in inputs:
                inputs[key] = ptr
                self._absorb(origin, p.pid, key)
            elif key not in accepts:
                node.pending_inputs[key] = (ptr, origin)
        return params

    def _step(self, p: _Placement, step_id: str) -> None:
        from tiltflow.workflow.workflow_file import WorkflowStep

        pid = p.pid
        node = _Node("step", p.cls)
        inputs = {our: f.pointer for our, f in p.feeds.items()}
        self._note_feeds(p)
        params = self._take_carried(p, step_id, node, inputs)
        params.update(p.own)
        params, scale = self._convert(p.mapping, p.proto, params, p.ctx, p.missing, p.notes)
        self.steps.append(
            WorkflowStep(id=pid, step=step_id, params=self._only_fields(step_id, params, p.notes), inputs=inputs)
        )
        for name, typ in self.known[step_id].outputs.items():
            node.by_kind.setdefault(output_kind(typ), f"{pid}.{name}")
            node.types[f"{pid}.{name}"] = typ
        node.ctx = dict(p.ctx)
        if scale != 1:
            if node.ctx.get("pixel_size_a"):
                node.ctx["pixel_size_a"] *= scale
            if step_id == "normalize":
                node.ctx["binned"] = node.ctx.get("binned", 1) * scale
        made = [f"workflow step {pid}"]
        p.entry.steps.append(pid)
        for extra in p.mapping.all_extras():
            made += self._extra(p, extra, node, inputs)
        self.nodes[pid] = node
        p.entry.kind, p.entry.step = "step", step_id
        p.entry.reason = "; ".join([" + ".join(made), *p.notes])

    def _extra(self, p: _Placement, extra: Extra, node: _Node, inputs: dict[str, str]) -> list[str]:
        from tiltflow.workflow.workflow_file import WorkflowStep

        pid, proto, ctx, notes, entry = p.pid, p.proto, p.ctx, p.notes, p.entry
        step_id = extra.mapping.step
        if extra.when is not None and not extra.when(proto, self.refs.get(pid, set())):
            return []
        if step_id not in self.known:
            notes.append(f"tiltflow has no '{step_id}' step: its {', '.join(extra.outputs)} not made")
            return []
        sid = f"{pid}-{step_id}"
        own = {ours: proto[s] for s, ours in extra.mapping.params.items() if proto.get(s) is not None}
        params, _ = self._convert(extra.mapping, proto, own, ctx, {}, notes)
        source = f"{pid}.TiltSeries" if extra.feed == "main" else inputs["input"]
        self.steps.append(
            WorkflowStep(
                id=sid, step=step_id, params=self._only_fields(step_id, params, notes), inputs={"input": source}
            )
        )
        for name in extra.outputs:
            node.named[name] = f"{sid}.{name}"
        for name, typ in self.known[step_id].outputs.items():
            node.by_kind.setdefault(output_kind(typ), f"{sid}.{name}")
            node.types[f"{sid}.{name}"] = typ
        entry.steps.append(sid)
        return [f"{sid} ({step_id})"]

    def _step_of(self, sid: str | None) -> str | None:
        return next((s.step for s in self.steps if s.id == sid), None)

    def finish(self) -> None:
        for entry in self.entries:
            node = self.nodes.get(entry.id)
            if entry.kind == "folded" and node is not None and node.feed is not None:
                own = {
                    k: v
                    for k, (v, origin) in {**node.feed.carried, **node.feed.carried_inputs}.items()
                    if origin == entry.id
                }
                taken = self.absorbed.get(entry.id, {})
                imported = self.composed.get(entry.id)
                if imported and self.nodes.get(imported) and self.nodes[imported].state == "step":
                    entry.step = self._step_of(imported)
                    text = (
                        f"folded into step {imported} ({entry.step}), which reads its mdocs; its tilt series are "
                        f"step {node.feed.source}'s ({self._step_of(node.feed.source)})"
                    )
                elif taken:
                    sids = [sid for sid, what in taken.items() if what] or list(taken)
                    entry.step = self._step_of(sids[0])
                    into = ", ".join(f"step {sid} ({self._step_of(sid)})" for sid in sids)
                    what = ", ".join(f"{k}={_shown(v)}" for k, v in own.items())
                    text = f"folded into {into}" + (f": {what}" if what else "")
                else:
                    text = "folded, but no tiltflow step uses its output"
                entry.reason = "; ".join([text, entry.reason] if entry.reason else [text])
            elif node is not None and node.state == "pass" and entry.id in self.fed:
                entry.reason += f"; its consumers ({', '.join(sorted(set(self.fed[entry.id])))}) take its input"


def scipion_plan(protocols: list[dict[str, Any]]) -> tuple[list, list[PlanEntry]]:
    """The workflow steps and the plan of a Scipion workflow (nothing raised for an empty plan)."""
    builder = _Builder(protocols)
    for proto in _in_dependency_order(builder.protocols, builder.ids):
        builder.place(proto)
    builder.finish()
    return builder.steps, builder.entries


def workflow_from_scipion(protocols: list[dict[str, Any]], origin: str):
    from tiltflow.workflow.workflow_file import Workflow

    if not isinstance(protocols, list) or not all(isinstance(p, dict) for p in protocols):
        raise InputError(f"{origin}: not a Scipion workflow (expected a list of protocols)")
    for i, p in enumerate(protocols, 1):
        if not isinstance(p.get("object.className"), str) or not isinstance(p.get("object.id"), (str, int)):
            raise InputError(
                f"{origin}: protocol {i} has no text 'object.className' and 'object.id' — "
                "is this a workflow exported by Scipion?"
            )
    steps, plan = scipion_plan(protocols)
    if not steps:
        err = InputError(
            f"{origin}: no protocol of this Scipion workflow can be run by tiltflow"
            f" ({', '.join(f'{e.protocol} (id {e.id})' for e in plan)}; see the plan)"
        )
        err.plan = plan  # type: ignore[attr-defined]
        raise err
    from tiltflow.workflow.scipion_streaming import streaming_import

    streaming = streaming_import(protocols, plan, steps)  # also says so in the plan
    wf = Workflow(steps=steps, name="scipion", plan=plan)
    wf.unmapped = [f"{e.protocol} (id {e.id})" for e in plan if e.step is None]  # type: ignore[attr-defined]
    wf.streaming = streaming  # type: ignore[attr-defined]  # watch settings when the import is in streaming
    return wf


def parse_scipion_template(text: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """A Scipion ``.json.template``: drop description lines, fill ``~...|default|...~`` with defaults and
    ``%(NAME)s`` from ``env``."""
    start = text.find("[")
    if start < 0:
        raise InputError("not a Scipion workflow: no JSON array")
    body = text[start:]

    def default(m: re.Match) -> str:
        parts = m.group(1).split("|")
        return parts[1] if len(parts) > 1 else ""

    body = re.sub(r"~([^~]*)~", default, body)
    env = env or {}
    body = re.sub(r"%\((\w+)\)s", lambda m: env.get(m.group(1), m.group(0)), body)
    try:
        return json.loads(body)
    except json.JSONDecodeError as err:
        raise InputError(f"Scipion workflow: invalid JSON at line {err.lineno} ({err.msg})") from None
