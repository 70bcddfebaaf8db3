"""Entry script: ``python distopt/search.py --config configs/mnist_cnn.yaml [key=value ...]``.

The same as ``distopt search``. Kept to absolute imports of the installed package, because
``ray submit`` copies this one file to the head node and runs it there.
"""

import sys

from distopt.cli import main

if __name__ == "__main__":
    sys.exit(main(["search", *sys.argv[1:]]))
