"""The command-line side of the library: one module per ``infomax`` subcommand that drives library
code (embed, index, eval, knn-grid, duplicates, search), each a ``main(argv) -> int`` that
``infomax.cli`` imports on demand, and ``flags`` (a library setting spelled as its flag).
Training's commands (train, export, up) live in ``training/``; ``serve`` in ``service/``."""
