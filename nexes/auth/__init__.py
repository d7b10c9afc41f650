"""Who is asking: identity (bearer tokens), roles and what each may do.

- identity: `Viewer`, the four roles;
- tokens: checking JWTs (PyJWT: HS256 with the secret, RS256/ES256 from a JWKS) and minting
  development ones;
- revocation: refused token ids in Redis;
- permissions: the one table of which roles may use which root field, mutation and route,
  and the pipeline guards that enforce it.

It imports nothing of the request path: nexes.http authenticates with it, nexes.execution
enforces its table.
"""
