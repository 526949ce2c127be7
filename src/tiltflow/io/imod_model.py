"""IMOD binary model files (``.mod``, fiducial ``.fid``), format "IMODV1.2".

Spec: IMOD ``binspec.html`` (big-endian; 8-byte ``IMODV1.2`` id, 232-byte model header, then
``OBJT`` (176 bytes) each followed by its ``CONT`` chunks (16 bytes + 12 bytes per point) and
optional chunks, ``IEOF`` at the end). Header fields keep the spec's names; optional chunks
(``SIZE`` is decoded, ``VIEW``, ``MINX``, ``IMAT``, ``MESH``, ``LABL`` ... are kept verbatim) so a
file read and written back is unchanged. Points are (x, y, z) in pixels of the image the model was
drawn on; for fiducial models z is the 0-based view (section) index.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "ImodContour",
    "ImodFormatError",
    "ImodModel",
    "ImodObject",
    "fiducial_model",
    "read_mod",
    "write_mod",
]


class ImodFormatError(ValueError):
    """A malformed IMOD file; the message names the file and the line or byte offset."""


# (name, struct code) in file order; '128s' etc. are raw byte strings
MODEL_HEADER = (
    ("name", "128s"),
    ("xmax", "i"),
    ("ymax", "i"),
    ("zmax", "i"),
    ("objsize", "i"),
    ("flags", "I"),
    ("drawmode", "i"),
    ("mousemode", "i"),
    ("blacklevel", "i"),
    ("whitelevel", "i"),
    ("xoffset", "f"),
    ("yoffset", "f"),
    ("zoffset", "f"),
    ("xscale", "f"),
    ("yscale", "f"),
    ("zscale", "f"),
    ("object", "i"),
    ("contour", "i"),
    ("point", "i"),
    ("res", "i"),
    ("thresh", "i"),
    ("pixsize", "f"),
    ("units", "i"),
    ("csum", "i"),
    ("alpha", "f"),
    ("beta", "f"),
    ("gamma", "f"),
)
OBJECT_HEADER = (
    ("name", "64s"),
    ("extra", "64s"),
    ("contsize", "i"),
    ("flags", "I"),
    ("axis", "i"),
    ("drawmode", "i"),
    ("red", "f"),
    ("green", "f"),
    ("blue", "f"),
    ("pdrawsize", "i"),
    ("symbol", "B"),
    ("symsize", "B"),
    ("linewidth2", "B"),
    ("linewidth", "B"),
    ("linesty", "B"),
    ("symflags", "B"),
    ("sympad", "B"),
    ("trans", "B"),
    ("meshsize", "i"),
    ("surfsize", "i"),
)
_MODEL = struct.Struct(">" + "".join(code for _, code in MODEL_HEADER))
_OBJECT = struct.Struct(">" + "".join(code for _, code in OBJECT_HEADER))
_CONT = struct.Struct(">iIii")
_CONTOUR_CHUNKS = {b"SIZE", b"LABL", b"COST"}
_OBJECT_CHUNKS = {b"IMAT", b"CLIP", b"MESH", b"OLBL", b"OBST", b"MEST"}
OBJ_OPEN, CONT_WILD = 1 << 3, 1 << 4
assert _MODEL.size == 232 and _OBJECT.size == 176


def _unpack(spec: tuple, packer: struct.Struct, data: bytes) -> dict[str, Any]:
    values = dict(zip((n for n, _ in spec), packer.unpack(data), strict=False))
    for key, code in spec:
        if code.endswith("s") and key == "name":
            values[key] = values[key].split(b"\0", 1)[0].decode("latin-1")
    return values


def _pack(spec: tuple, packer: struct.Struct, header: dict[str, Any]) -> bytes:
    values = []
    for key, _ in spec:
        v = header[key]
        values.append(v.encode("latin-1") if isinstance(v, str) else v)
    return packer.pack(*values)


@dataclass
class ImodContour:
    points: torch.Tensor  # (n, 3) float32 x, y, z
    flags: int = 0
    time: int = 0
    surf: int = 0
    sizes: torch.Tensor | None = None  # (n,) float32 point sizes (SIZE chunk)
    chunks: list[tuple[bytes, bytes]] = field(default_factory=list)  # other chunks, verbatim


@dataclass
class ImodObject:
    header: dict[str, Any]  # OBJECT_HEADER names; contsize/meshsize are recomputed on write
    contours: list[ImodContour] = field(default_factory=list)
    chunks: list[tuple[bytes, bytes]] = field(default_factory=list)  # IMAT, MESH, CLIP ... verbatim


@dataclass
class ImodModel:
    header: dict[str, Any]  # MODEL_HEADER names; objsize is recomputed on write
    objects: list[ImodObject] = field(default_factory=list)
    chunks: list[tuple[bytes, bytes]] = field(default_factory=list)  # VIEW, MINX ... verbatim


def _mesh_size(data: bytes, at: int) -> int:
    vsize, lsize = struct.unpack_from(">ii", data, at)
    return 20 + 12 * vsize + 4 * lsize


def _problem(strict: bool, message: str) -> None:
    """Raise (``strict``) or warn, attributed to the caller of :func:`read_mod`."""
    if strict:
        raise ImodFormatError(message)
    warnings.warn(message, stacklevel=3)


def _read_contour(data: bytes, at: int, model: ImodModel, path: Path) -> tuple[ImodContour, int]:
    if not model.objects:
        raise ImodFormatError(f"{path}: byte {at}: CONT before any OBJT")
    psize, flags, time, surf = _CONT.unpack_from(data, at + 4)
    end = at + 20 + 12 * psize
    if psize < 0 or end > len(data):
        raise struct.error("contour runs past the end")
    contour = ImodContour(_floats(data[at + 20 : end]).reshape(psize, 3), flags, time, surf)
    model.objects[-1].contours.append(contour)
    return contour, end


def _read_sized_chunk(data: bytes, at: int, cid: bytes, model: ImodModel, contour: ImodContour | None) -> int:
    """A chunk with a size word: the contour's sizes, or kept verbatim where it belongs."""
    (size,) = struct.unpack_from(">i", data, at + 4)
    if size < 0 or at + 8 + size > len(data):
        raise struct.error(f"chunk {cid!r} of {size} bytes runs past the end")
    body = data[at + 8 : at + 8 + size]
    if cid == b"SIZE" and contour is not None and size == 4 * len(contour.points):
        contour.sizes = _floats(body)
    elif cid in _CONTOUR_CHUNKS and contour is not None:
        contour.chunks.append((cid, body))
    elif cid in _OBJECT_CHUNKS and model.objects:
        model.objects[-1].chunks.append((cid, body))
    else:
        model.chunks.append((cid, body))
    return at + 8 + size


def _read_chunk(
    data: bytes, at: int, cid: bytes, model: ImodModel, contour: ImodContour | None, path: Path
) -> tuple[ImodContour | None, int]:
    """Read the chunk ``cid`` at byte ``at``: the contour that chunks now belong to, and the next offset."""
    if cid == b"OBJT":
        model.objects.append(ImodObject(_unpack(OBJECT_HEADER, _OBJECT, data[at + 4 : at + 180])))
        return None, at + 180
    if cid == b"CONT":
        return _read_contour(data, at, model, path)
    if cid == b"MESH":
        size = _mesh_size(data, at + 4)
        model.objects[-1].chunks.append((cid, data[at + 4 : at + 4 + size]))
        return contour, at + 4 + size
    return contour, _read_sized_chunk(data, at, cid, model, contour)


def read_mod(path: str | Path, *, strict: bool = True) -> ImodModel:
    """Read an IMOD binary model; ``strict=False`` turns a truncated tail into a warning."""
    path = Path(path)
    data = path.read_bytes()
    if data[:4] != b"IMOD" or data[4:8] != b"V1.2":
        raise ImodFormatError(f"{path}: not an IMOD V1.2 binary model (starts {data[:8]!r})")
    if len(data) < 240:
        raise ImodFormatError(f"{path}: {len(data)} bytes, shorter than the 240-byte header")
    model = ImodModel(_unpack(MODEL_HEADER, _MODEL, data[8:240]))
    at = 240
    contour: ImodContour | None = None
    while at + 4 <= len(data):
        cid = data[at : at + 4]
        if cid == b"IEOF":
            break
        try:
            contour, at = _read_chunk(data, at, cid, model, contour, path)
        except (struct.error, IndexError) as err:
            msg = f"{path}: byte {at}: bad {cid!r} chunk ({err}); the file is truncated or corrupt"
            if strict:
                raise ImodFormatError(msg) from None
            warnings.warn(msg, stacklevel=2)
            break
    else:
        _problem(strict, f"{path}: no IEOF end marker; the file may be truncated")
    if len(model.objects) != model.header["objsize"]:
        _problem(strict, f"{path}: header says {model.header['objsize']} objects, found {len(model.objects)}")
    return model


def _floats(raw: bytes) -> torch.Tensor:
    """Big-endian float32 bytes -> native float32 tensor (a copy)."""
    return torch.from_numpy(np.frombuffer(raw, dtype=">f4").astype(np.float32))


def _to_be(t: torch.Tensor) -> bytes:
    return t.detach().cpu().to(torch.float32).numpy().astype(">f4").tobytes()


def write_mod(path: str | Path, model: ImodModel) -> None:
    """Write a model; counts in the headers follow the lists, chunks are written back as read."""
    header = {**model.header, "objsize": len(model.objects)}
    out = [b"IMODV1.2", _pack(MODEL_HEADER, _MODEL, header)]
    for obj in model.objects:
        meshes = sum(1 for cid, _ in obj.chunks if cid == b"MESH")
        header = {**obj.header, "contsize": len(obj.contours), "meshsize": meshes}
        out += [b"OBJT", _pack(OBJECT_HEADER, _OBJECT, header)]
        for c in obj.contours:
            pts = torch.as_tensor(c.points, dtype=torch.float32).reshape(-1, 3)
            out += [b"CONT", _CONT.pack(pts.shape[0], c.flags, c.time, c.surf), _to_be(pts)]
            if c.sizes is not None:
                sizes = torch.as_tensor(c.sizes, dtype=torch.float32).reshape(-1)
                if sizes.numel() != pts.shape[0]:
                    raise ValueError(f"contour has {pts.shape[0]} points, {sizes.numel()} sizes; give one each")
                out += [b"SIZE", struct.pack(">i", 4 * sizes.numel()), _to_be(sizes)]
            out += [cid + struct.pack(">i", len(body)) + body for cid, body in c.chunks]
        for cid, body in obj.chunks:
            out.append(cid + body if cid == b"MESH" else cid + struct.pack(">i", len(body)) + body)
    out += [cid + struct.pack(">i", len(body)) + body for cid, body in model.chunks]
    out.append(b"IEOF")
    Path(path).write_bytes(b"".join(out))


def fiducial_model(
    contours: Sequence[torch.Tensor],  # each (n, 3): x, y px and z = 0-based view index
    *,
    image_shape: tuple[int, int],  # (ny, nx) of the tilt images
    n_views: int,
    pixel_size_a: float = 1.0,
    name: str = "tiltflow fiducials",
    sizes: Sequence[torch.Tensor] | None = None,  # optional (n,) sizes per contour
) -> ImodModel:
    """A one-object model of open contours (one per bead), as tiltalign reads it."""
    ny, nx = image_shape
    header: dict[str, Any] = {k: 0 for k, _ in MODEL_HEADER}
    header.update(
        name=name,
        xmax=nx,
        ymax=ny,
        zmax=n_views,
        drawmode=1,
        mousemode=1,
        whitelevel=255,
        xscale=1.0,
        yscale=1.0,
        zscale=1.0,
        pixsize=pixel_size_a,
        units=-10 if pixel_size_a != 1.0 else 0,
        blacklevel=0,
    )
    header.update(xoffset=0.0, yoffset=0.0, zoffset=0.0, alpha=0.0, beta=0.0, gamma=0.0)
    obj: dict[str, Any] = {k: 0 for k, _ in OBJECT_HEADER}
    obj.update(
        name="",
        extra=b"",
        flags=OBJ_OPEN,
        red=0.0,
        green=1.0,
        blue=0.0,
        pdrawsize=0,
        symbol=0,
        symsize=7,
        linewidth2=1,
        linewidth=1,
    )
    conts = []
    for i, pts in enumerate(contours):
        pts = torch.as_tensor(pts, dtype=torch.float32).reshape(-1, 3).cpu()
        wild = pts.shape[0] > 1 and bool((pts[:, 2] != pts[0, 2]).any())
        s = None if sizes is None else torch.as_tensor(sizes[i], dtype=torch.float32).reshape(-1)
        conts.append(ImodContour(pts.clone(), CONT_WILD if wild else 0, sizes=s))
    return ImodModel(header, [ImodObject(obj, conts)])
