import sys

from nftrace.cli import main

sys.exit(main())
