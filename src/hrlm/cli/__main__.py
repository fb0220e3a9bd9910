"""``python -m hrlm.cli``: the same as the ``hrlm`` script."""

from hrlm.cli import main

main()
