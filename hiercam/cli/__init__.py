"""The command line: ``hiercam demo | run | bench | hierarchy | cam | data check``.

[`main`][hiercam.cli.main] parses the arguments and calls the library: ``hiercam.pipeline`` for ``demo``,
``run`` and ``bench``, [`group_classes`][hiercam.group_classes] for ``hierarchy``, and
[`explain_images`][hiercam.cli.explain.explain_images] (module ``hiercam.cli.explain``) for ``cam``. The
console script ``hiercam`` and ``python -m hiercam`` both call ``hiercam.cli.main``.
"""

from hiercam.cli.commands import build_parser, main

__all__ = ["main", "build_parser"]
