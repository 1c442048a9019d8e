from qqbridge.cli import main

raise SystemExit(main())
