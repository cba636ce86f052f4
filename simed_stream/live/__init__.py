"""Live: `simed run` — the receiver and the particle chain side by side (`pipeline`), the event
thread (`events`), the phasing thread (`phasing`), telemetry (`status`); settings: `settings`."""
