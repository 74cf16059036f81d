-- graderqueue's platforms: a platform may be allowed the legacy tokens
-- France-ioi's platforms make (no kid, iat, exp or jti; a date claim), off
-- unless an operator turns it on. Their replay protection needs no table of
-- its own: the digest of each legacy token's JWE goes into token_ids as its
-- jti.
ALTER TABLE platforms ADD COLUMN legacy_tokens INTEGER NOT NULL DEFAULT 0;
