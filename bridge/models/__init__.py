"""Model clients (one per wire API), reasoning stripping and routing.

Import from the submodules: ``bridge.models.clients.make_client``,
``bridge.models.router.ModelRouter``, ``bridge.models.reasoning.strip_reasoning``.
"""
