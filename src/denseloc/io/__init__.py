"""Reading and writing movies and localization tables."""

from denseloc.io.formats import FORMATS, read_table, write_table

__all__ = ["FORMATS", "read_table", "write_table"]
