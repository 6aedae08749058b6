"""The HTTP doors (issue 5): the API, the billing webhook, claims and the gateway.

Routes never write SQL: they call `state.Store` and `state.access.Access`.
"""
