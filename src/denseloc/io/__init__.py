"""Reading and writing movies and localization tables."""

from denseloc.io.formats import FORMATS, read_table, writable_format, write_table
from denseloc.io.movie import Movie, open_movie, read_pixel_size_nm, write_tiff

__all__ = [
    "FORMATS",
    "Movie",
    "open_movie",
    "read_pixel_size_nm",
    "read_table",
    "writable_format",
    "write_table",
    "write_tiff",
]
