"""veza_api: the platform's backend API worker.

Layers, each importing only those below it (no circles):

- `cli`, `migrate_cli` read the environment once; `app` wires routes, middleware and the context;
- route modules (`accounts`, `magiclinks`, `oidc`, `tokens`, `users`, `rooms`, `moderation`, `tracks`,
  `audit`, `openapi`) and `middleware`: thin aiohttp handlers, never importing one another;
- request helpers for them: `rbac` (the caller and guards), `bodies` (request models), `errors`;
- `services`: the domain logic, taking the context, never a request;
- `context` (the `Api` dataclass under the `API` app key) over `mail`, `oidc_client`, `passwords`, `settings`.
"""
