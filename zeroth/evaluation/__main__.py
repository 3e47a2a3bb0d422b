import sys

from zeroth.evaluation.harness import main

sys.exit(main())
