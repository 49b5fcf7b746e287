import sys

from voucher_ledger.cli.main import main

sys.exit(main())
