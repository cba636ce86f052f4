import sys

from simed_stream.cli import main

sys.exit(main())
