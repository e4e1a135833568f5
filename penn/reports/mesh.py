"""Surface meshes of segmented classes in scanner (RAS, mm) coordinates, as binary PLY or STL.

Both formats are a short header plus packed little-endian records, written here with numpy so
that no mesh library is needed. Every header starts with ``SPACE=RAS``, the marker 3D Slicer reads
to place a mesh (without it Slicer assumes LPS and mirrors the mesh left-right and front-back).
"""

from __future__ import annotations

import numpy as np
from skimage import measure

__all__ = ["surface_mesh", "ply_bytes", "stl_bytes", "mesh_bytes", "FORMATS", "SPACE"]

#: the coordinate-system marker of every header (3D Slicer's convention): vertices are RAS mm
SPACE = "SPACE=RAS"


def surface_mesh(
    mask: np.ndarray, affine: np.ndarray, step_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Marching-cubes surface of a binary mask, mapped to world coordinates.

    The mask is padded with one empty voxel on every side so that surfaces touching the volume's
    border are closed. Marching cubes runs in voxel units (``spacing=(1, 1, 1)``) and the full
    affine then maps vertices to the world, which accounts for voxel size, axis flips and oblique
    orientations alike (the spacing alone would only handle the first).

    Args:
        mask: (X, Y, Z) bool, the class's voxels.
        affine: 4x4 voxel-to-world affine of ``mask``'s grid (mm).
        step_size: marching-cubes step in voxels (larger: coarser, smaller files).

    Returns:
        (vertices (V, 3) float32 world mm, faces (F, 3) int32) with outward-facing triangles;
        both empty when the mask is.
    """
    if not mask.any():
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32)
    padded = np.pad(mask.astype(np.float32), 1)
    verts, faces, _, _ = measure.marching_cubes(
        padded, level=0.5, spacing=(1.0, 1.0, 1.0), step_size=step_size, allow_degenerate=False
    )
    voxel = verts - 1.0  # undo the padding
    world = voxel @ affine[:3, :3].T + affine[:3, 3]
    # skimage's winding makes normals (right-hand rule) point into the object; reverse it so they
    # point out, unless a mirroring affine has already turned the triangles inside out
    if np.linalg.det(affine[:3, :3]) > 0:
        faces = faces[:, ::-1]
    return world.astype(np.float32), np.ascontiguousarray(faces, dtype=np.int32)


def ply_bytes(vertices: np.ndarray, faces: np.ndarray, comment: str = "penn") -> bytes:
    """Binary little-endian PLY: float32 x, y, z per vertex, a uchar-counted int32 list per face."""
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"comment {SPACE}\n"
        f"comment {comment}\n"
        f"element vertex {len(vertices)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        f"element face {len(faces)}\n"
        "property list uchar int vertex_indices\nend_header\n"
    )
    records = np.zeros(len(faces), dtype=[("n", "u1"), ("v", "<i4", (3,))])
    records["n"], records["v"] = 3, faces
    return header.encode("ascii") + vertices.astype("<f4").tobytes() + records.tobytes()


def stl_bytes(vertices: np.ndarray, faces: np.ndarray, comment: str = "penn") -> bytes:
    """Binary STL: 80-byte header, triangle count, then normal + 3 vertices + uint16 per face."""
    triangles = vertices[faces].astype(np.float64)  # (F, 3, 3)
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    lengths = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = np.divide(normals, lengths, out=np.zeros_like(normals), where=lengths > 0)
    records = np.zeros(
        len(faces), dtype=[("normal", "<f4", (3,)), ("v", "<f4", (3, 3)), ("attr", "<u2")]
    )
    records["normal"], records["v"] = normals, triangles
    # starts with SPACE=, never with "solid" (the ASCII-STL marker would mislead readers)
    header = f"{SPACE} {comment}".encode("ascii")[:80].ljust(80, b" ")
    return header + np.uint32(len(faces)).astype("<u4").tobytes() + records.tobytes()


FORMATS = {"ply": ply_bytes, "stl": stl_bytes}


def mesh_bytes(vertices: np.ndarray, faces: np.ndarray, fmt: str, comment: str = "penn") -> bytes:
    """The mesh in ``fmt`` (``ply`` or ``stl``).

    Raises:
        ValueError: an unknown format.
    """
    if fmt not in FORMATS:
        raise ValueError(f"mesh.format={fmt!r}: use one of {sorted(FORMATS)}")
    return FORMATS[fmt](vertices, faces, comment)
