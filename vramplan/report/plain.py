"""Plain-text tables in rich's default look (a heavy head over light rows), for the estimate table the CLI prints
most often: importing and rendering rich costs ~35 ms of a ~0.24 s call. Colour (ANSI) only on a terminal."""

import shutil
import textwrap

_STYLES = {"bold green": "\033[1;32m", "bold red": "\033[1;31m", "dim": "\033[2m", "italic": "\033[3m"}
_RESET = "\033[0m"


def styled(text: str, style: str | None, color: bool) -> str:
    return f"{_STYLES[style]}{text}{_RESET}" if color and style else text


def box_table(title: str | None, columns: list[tuple[str, str]], rows: list[list[str]], *, color: bool = False) -> str:
    """`columns`: (header, "left" | "right"); `rows`: cells as text. Cells are padded by one space each side."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, (h, _) in enumerate(columns)]

    def line(cells: list[str], left: str, sep: str, right: str) -> str:
        out = []
        for cell, width, (_, justify) in zip(cells, widths, columns, strict=True):
            out.append(" " + (cell.rjust(width) if justify == "right" else cell.ljust(width)) + " ")
        return left + sep.join(out) + right

    def rule(left: str, fill: str, sep: str, right: str) -> str:
        return left + sep.join(fill * (w + 2) for w in widths) + right

    table_width = sum(w + 3 for w in widths) + 1
    # rich wraps a title wider than its table to the table's width
    parts = [styled(t, "italic", color) for t in textwrap.wrap(title, width=table_width)] if title else []
    parts += [
        rule("┏", "━", "┳", "┓"),
        line([h for h, _ in columns], "┃", "┃", "┃"),
        rule("┡", "━", "╇", "┩"),
        *(line(r, "│", "│", "│") for r in rows),
        rule("└", "─", "┴", "┘"),
    ]
    return "\n".join(parts)


def bullet_list(heading: str, items: tuple[str, ...] | list[str], *, color: bool = False) -> str:
    """A heading and "  - item" lines wrapped to the terminal (at least 100 columns), continuation indented."""
    width = max(100, shutil.get_terminal_size((100, 24)).columns)
    lines = [heading]
    for item in items:
        lines += textwrap.wrap(item, width=width, initial_indent="  - ", subsequent_indent="    ") or ["  -"]
    return styled("\n".join(lines), "dim", color)
