//! A `.creds` file: a user JWT and its NKEY seed (NATS's decentralized authentication, the file
//! `nsc` writes). Read again at every connection, so a rotated file — a new user JWT before the
//! old one expires — reaches the next reconnect without a restart (async-nats's own
//! `credentials_file` reads it once).

use std::path::{Path, PathBuf};

use async_nats::{Auth, AuthError};
use nkeys::KeyPair;

/// The user JWT and the key pair of its seed, from a creds file's text: the first non-empty line
/// after each `-----BEGIN …-----` marker. The error never quotes the text.
pub(crate) fn parse(text: &str) -> Result<(String, KeyPair), &'static str> {
    let after = |marker: &str| {
        let mut lines = text.lines().map(str::trim);
        lines.by_ref().find(|l| l.starts_with("-----BEGIN") && l.contains(marker))?;
        lines.find(|l| !l.is_empty()).map(str::to_owned)
    };
    let jwt = after("NATS USER JWT").ok_or("holds no NATS user JWT")?;
    let seed = after("USER NKEY SEED").ok_or("holds no user NKEY seed")?;
    let key = KeyPair::from_seed(&seed).map_err(|_| "holds a user NKEY seed that does not decode")?;
    Ok((jwt, key))
}

/// The file's JWT and key pair; errors say why without the contents.
pub(crate) fn read(path: &Path) -> Result<(String, KeyPair), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot be read ({e})"))?;
    parse(&text).map_err(str::to_owned)
}

/// The connection's authentication: at each connect the file is read and the server's nonce
/// signed with its seed. `login` is the URL's `user:password`, sent as well (async-nats sends
/// only what the callback returns).
pub(crate) fn authenticate(
    path: PathBuf,
    login: Option<(String, String)>,
) -> impl Fn(Vec<u8>) -> std::future::Ready<Result<Auth, AuthError>> + Send + Sync + 'static {
    move |nonce| {
        let signed = read(&path).and_then(|(jwt, key)| {
            let signature = key.sign(&nonce).map_err(|e| format!("cannot sign with its seed ({e})"))?;
            Ok((jwt, signature))
        });
        std::future::ready(match signed {
            Ok((jwt, signature)) => {
                let mut auth = Auth::new();
                auth.jwt = Some(jwt);
                auth.signature = Some(signature);
                (auth.username, auth.password) = login.clone().unzip();
                Ok(auth)
            }
            Err(what) => Err(AuthError::new(format!("{}: {what}", path.display()))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(jwt: &str, seed: &str) -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        )
    }

    #[test]
    fn the_jwt_and_seed_come_from_their_markers() {
        let user = KeyPair::new_user();
        let (jwt, key) = parse(&creds("eyJ0eXAi.eyJqdGki.c2ln", &user.seed().unwrap())).unwrap();
        assert_eq!(jwt, "eyJ0eXAi.eyJqdGki.c2ln");
        assert_eq!(key.public_key(), user.public_key());
    }

    #[test]
    fn a_file_without_either_part_is_refused_without_being_quoted() {
        let user = KeyPair::new_user();
        assert_eq!(parse("just text").err(), Some("holds no NATS user JWT"));
        let no_seed = creds("eyJ", &user.seed().unwrap()).replace("USER NKEY SEED", "SOMETHING");
        assert_eq!(parse(&no_seed).err(), Some("holds no user NKEY seed"));
        assert_eq!(parse(&creds("eyJ", "SUNOTASEED")).err(), Some("holds a user NKEY seed that does not decode"));
    }
}
