"""The API's domain logic: accounts, sessions, tokens, roles, the audit log.

Services take the context (`veza_api.context.Api`) or a database handle and plain
values, never an aiohttp request, and raise `veza_core.web.HttpError` for answers
other than success. Route modules call them; services never import routes.
"""
