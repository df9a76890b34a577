"""The consoles the CLI prints to."""

from __future__ import annotations

import os

from rich.console import Console, ConsoleDimensions

#: Width of tables written to a pipe or file, where there is no terminal to measure.
PIPE_WIDTH = 200


class CliConsole(Console):
    """A rich console as wide as the terminal, or ``PIPE_WIDTH`` when output is piped.

    Rich falls back to 80 columns without a terminal, which truncates the history and review
    tables to unreadable stubs in ``histimport history | less`` or a redirected file.
    ``COLUMNS`` still wins when set.
    """

    @property
    def size(self) -> ConsoleDimensions:
        measured = super().size
        if self._width is None and not self.is_terminal and "COLUMNS" not in os.environ:
            return ConsoleDimensions(PIPE_WIDTH, measured.height)
        return measured

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


out = CliConsole()
err = CliConsole(stderr=True)
