//! The names the scrubber knows: options, headers and query parameters
//! whose value is a secret.

/// Options whose value is a secret, whatever the program.
pub(super) const SECRET_OPTS: &[&str] = &[
    "--password",
    "--passwd",
    "--pass",
    "--token",
    "--auth-token",
    "--access-token",
    "--api-key",
    "--apikey",
    "--secret",
    "--client-secret",
    "--secret-key",
    "--private-key-passphrase",
    "--passphrase",
    "--oauth2-bearer",
    "--bearer",
    "--registry-password",
    "--docker-password",
    "--aws-secret-access-key",
];

/// Options whose value is `user:password`.
pub(super) const USER_OPTS: &[&str] = &["-u", "--user", "-U", "--proxy-user", "--basic-auth"];

/// Options whose value is a header line.
pub(super) const HEADER_OPTS: &[&str] = &["-H", "--header", "--proxy-header", "--extra-header"];

/// Options whose value is `NAME=value`.
pub(super) const ENV_OPTS: &[&str] = &["-e", "--env", "--set-env", "--build-arg", "--set"];

/// Header names whose value is a credential.
pub(super) const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "x-access-token",
    "private-token",
    "job-token",
    "x-amz-security-token",
    "x-goog-api-key",
    "x-vault-token",
];

/// Query parameters whose value is a secret.
pub(super) const SECRET_PARAMS: &[&str] = &[
    "access_token",
    "refresh_token",
    "id_token",
    "token",
    "auth",
    "sig",
    "signature",
    "key",
    "api_key",
    "apikey",
    "password",
    "passwd",
    "pwd",
    "secret",
    "client_secret",
    "code",
    "session",
    "sessionid",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
    "private_token",
];
