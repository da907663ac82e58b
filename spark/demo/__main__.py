"""`python -m spark.demo [section.key=value ...]`: spark.demo.pipeline.main from the command line."""

import inspect
import sys

from spark.cli import run_command
from spark.demo.pipeline import main

if sys.argv[1:2] in (["-h"], ["--help"]):
    print("python -m spark.demo [section.key=value ...]\n\n" + inspect.getdoc(main))
else:
    sys.exit(run_command(main, sys.argv[1:]))
