"""Usage, cost and limits: what each model call used, what it cost, and the caps.

``record`` turns a turn's model calls into usage rows (tokens from each API's own usage
fields, else an estimate; cost from the model's ``cost``) and keeps the running spend per
provider; ``budgets`` lets the router skip a provider whose budget is reached; ``limits``
is the check at the door; ``report`` answers ``/usage`` and ``palaver usage``.
"""
