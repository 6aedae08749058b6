"""The HTTP doors through which tenants are asked for and reached: the API, the billing webhook, claims
and the gateway.

Routes never write SQL: they call `state.Store` and `state.access.Access`.
"""
