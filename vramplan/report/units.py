"""Byte formatting (bytes stay integers everywhere else; converted only when printed)."""

GIB = 1024**3
MIB = 1024**2


def gib(nbytes: int | float | None) -> str:
    """'12.34 GiB' (or '—' for None)."""
    if nbytes is None:
        return "—"
    return f"{nbytes / GIB:.2f} GiB"


def human_bytes(nbytes: int | float | None) -> str:
    """GiB for large values, MiB for small ones."""
    if nbytes is None:
        return "—"
    if abs(nbytes) >= GIB:
        return gib(nbytes)
    return f"{nbytes / MIB:.1f} MiB"
