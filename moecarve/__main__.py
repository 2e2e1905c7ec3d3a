import sys

from moecarve.cli import main

sys.exit(main())
