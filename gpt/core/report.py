"""Markdown tables, the one format every job's report is written in."""


def markdown_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    """A GitHub-flavoured table; ``align`` gives each column's separator (``---``, ``---:``), left by default.
    Pipes and newlines inside cells are escaped, so any text fits in a cell."""

    def cells(row):
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |"

    separator = "| " + " | ".join(align or ["---"] * len(header)) + " |"
    return "\n".join([cells(header), separator, *map(cells, rows)]) + "\n"
