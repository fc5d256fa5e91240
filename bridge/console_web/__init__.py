"""The web operator console: a page to see every chat and change its model.

Served by ``palaver run`` (``console.enabled``, ``console.host:console.port``, loopback by
default).  ``auth`` holds the login token, the one-time links, sessions and the rate limit;
``backend`` what the console reads and changes in a running Palaver (the App facade);
``server`` the aiohttp application, its security middlewares and the pages; ``cli`` the
``palaver console`` command.  Templates and static files ship in the package: nothing is
loaded from another host.
"""

