from push_relay.cli import main

raise SystemExit(main())
