"""``python -m envoyconf render --out FILE`` (see envoyconf.entrypoint)."""

from envoyconf.entrypoint import main

raise SystemExit(main())
