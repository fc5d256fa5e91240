"""Model clients (one per wire API), reasoning stripping and routing."""
