"""Entry script: ``python distopt/search.py --config configs/mnist_cnn.yaml [key=value ...]``.

The same as ``distopt search``. Kept to absolute imports of the installed package, because
``ray submit`` copies this one file to the head node and runs it there.
"""

import os
import sys

# Run as a script, this file's folder heads sys.path, where the package's modules (config.py,
# data.py, ...) would shadow any top-level module of those names: import the package instead.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

from distopt.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["search", *sys.argv[1:]]))
