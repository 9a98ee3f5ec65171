"""`python -m crest_cli`: the `crest` command without the installed script."""

import sys

from crest_cli.main import main

sys.exit(main())
