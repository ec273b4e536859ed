from rflens.cli import main

raise SystemExit(main())
