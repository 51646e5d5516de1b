from mnnq.cli import main

raise SystemExit(main())
