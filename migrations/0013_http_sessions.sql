-- The dashboard's logins as server-side sessions (issue 21, finding 5).
--
-- The login cookie held the bearer token itself: the API accepted it, "Log out" could not
-- revoke a copied cookie, and its 12 hours were only the browser's Max-Age. A login now opens
-- a session: the cookie holds a random session id, and this table holds sha256 of that id (a
-- reader of the table learns nothing it could log in with), the token the session stands for
-- (its name and the sha256 the tokens file holds), and its expiry and revocation. Kept in the
-- database, so every serve instance agrees and a restart keeps them. A request with the
-- cookie is accepted while the session is neither expired nor revoked and its token is still
-- in the tokens file (serve rereads the file when it changes).
CREATE TABLE retrylog_http_session (
    id_hash    bytea PRIMARY KEY CHECK (octet_length(id_hash) = 32),
    token_name text NOT NULL,
    token_hash bytea NOT NULL CHECK (octet_length(token_hash) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz
);

-- serve's HTTP side runs as the owner or an operator (docs/security.md); readers never see
-- who is logged in.
GRANT SELECT, INSERT, UPDATE, DELETE ON retrylog_http_session TO retrylog_operator;
