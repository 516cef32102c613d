//! NATS decentralized authentication made in the test, as `nsc` would make it: an operator, its
//! accounts and their users as NKEYs, each JWT signed by the one above (the operator signs
//! itself and its accounts, an account its users), and users' `.creds` files. The JWTs are the
//! v2 format nats-server reads: `{"typ":"JWT","alg":"ed25519-nkey"}`, claims with `nats.type`,
//! signed over `header.claims` (base64url without padding).

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use serde_json::{Value, json};

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A JWT of `claims` (with `iss` = `signer`'s public key) signed by `signer`.
fn encode(signer: &KeyPair, subject: &str, expires: Option<i64>, nats: Value) -> String {
    let mut claims = json!({
        "jti": uuid::Uuid::now_v7().simple().to_string().to_uppercase(),
        "iat": now(),
        "iss": signer.public_key(),
        "sub": subject,
        "name": subject,
        "nats": nats,
    });
    if let Some(at) = expires {
        claims["exp"] = at.into();
    }
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = signer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

pub struct Operator {
    key: KeyPair,
    system: Account,
}

pub struct Account {
    key: KeyPair,
    pub jwt: String,
}

pub struct User {
    key: KeyPair,
    pub jwt: String,
}

impl Operator {
    pub fn new() -> Self {
        let key = KeyPair::new_operator();
        let system = Account::signed_by(&key);
        Self { key, system }
    }

    /// An account of this operator, with no limits.
    pub fn account(&self) -> Account {
        Account::signed_by(&self.key)
    }

    /// The server's configuration in operator mode: this operator trusted, `accounts` (and the
    /// system account) known from the configuration itself (the memory resolver).
    pub fn server_config(&self, dir: &Path, listen: &str, accounts: &[&Account]) -> String {
        let operator = encode(&self.key, &self.key.public_key(), None, json!({"type": "operator", "version": 2}));
        let path = dir.join(format!("{}.jwt", self.key.public_key()));
        std::fs::write(&path, operator).unwrap();
        let preload: Vec<String> = std::iter::once(&self.system)
            .chain(accounts.iter().copied())
            .map(|a| format!("  {}: \"{}\"", a.key.public_key(), a.jwt))
            .collect();
        format!(
            "listen: \"{listen}\"\noperator: \"{}\"\nsystem_account: \"{}\"\nresolver: MEMORY\nresolver_preload: {{\n{}\n}}\n",
            path.display(),
            self.system.key.public_key(),
            preload.join("\n")
        )
    }
}

impl Account {
    fn signed_by(operator: &KeyPair) -> Self {
        let key = KeyPair::new_account();
        let limits = json!({
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1,
        });
        let nats = json!({
            "limits": limits,
            "default_permissions": {"pub": {}, "sub": {}},
            "type": "account",
            "version": 2,
        });
        let jwt = encode(operator, &key.public_key(), None, nats);
        Self { key, jwt }
    }

    /// A user of this account; its JWT expires at `expires` (Unix seconds) when given.
    pub fn user(&self, expires: Option<i64>) -> User {
        let key = KeyPair::new_user();
        let nats = json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2});
        let jwt = encode(&self.key, &key.public_key(), expires, nats);
        User { key, jwt }
    }
}

impl User {
    /// The `.creds` file text: this user's JWT with `seed_of`'s seed (the user's own, normally).
    pub fn creds_with_seed_of(&self, seed_of: &User) -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\n{}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n",
            self.jwt,
            seed_of.key.seed().unwrap()
        )
    }

    pub fn creds(&self) -> String {
        self.creds_with_seed_of(self)
    }
}
