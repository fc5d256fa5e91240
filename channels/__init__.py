"""Channel adapters: platform events in, platform calls out."""
