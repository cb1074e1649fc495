"""What the command-line tools share: a bad input ends the tool with one line and exit status 2, not a traceback."""
import sys
from typing import Callable


def run_reporting_errors(run: Callable[[], int]) -> int:
    """``run()``'s exit status; a FileNotFoundError or ValueError (ConfigError, list, dataset and tokenizer errors are
    ValueErrors) is printed as ``error: ...`` and gives 2."""
    try:
        return run()
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
