//! Who may see what on `/mail`: address patterns (`alice@example.com`,
//! `*@example.com`), the signed-in viewer, and argon2 password hashes.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, Params};
use std::sync::OnceLock;

/// The user name the admin token signs in as; it sees every message.
pub const ADMIN_USER: &str = "admin";

/// One entry of `mailbox_access[N].addresses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// One address, compared without regard to case.
    Address(String),
    /// `*@domain`: every address of the domain (not its subdomains).
    Domain(String),
}

impl Pattern {
    /// Parses `local@domain` or `*@domain`.
    pub fn parse(s: &str) -> Result<Pattern, String> {
        let bad = || format!("{s:?} is not an address (alice@example.com) or *@domain");
        let t = s.trim();
        let (local, domain) = t.rsplit_once('@').ok_or_else(bad)?;
        let domain = domain.trim_end_matches('.');
        let domain_ok = !domain.is_empty()
            && !domain.starts_with('.')
            && !domain.contains(|c: char| {
                c.is_whitespace() || c.is_control() || matches!(c, '@' | '*' | '/' | ':')
            });
        let local_ok = !local.is_empty()
            && !local.contains(|c: char| c.is_whitespace() || c.is_control())
            && (local == "*" || !local.contains('*'));
        if !(domain_ok && local_ok) {
            return Err(bad());
        }
        Ok(if local == "*" {
            Pattern::Domain(domain.to_lowercase())
        } else {
            Pattern::Address(format!(
                "{}@{}",
                local.to_lowercase(),
                domain.to_lowercase()
            ))
        })
    }

    /// True if `address` (an envelope recipient) is covered.
    pub fn matches(&self, address: &str) -> bool {
        let Some((local, domain)) = address.trim().rsplit_once('@') else {
            return false;
        };
        let domain = domain.trim_end_matches('.');
        if local.is_empty() || domain.is_empty() {
            return false;
        }
        match self {
            Pattern::Address(want) => {
                let (wl, wd) = want.rsplit_once('@').unwrap_or((want, ""));
                local.to_lowercase() == wl && domain.to_lowercase() == wd
            }
            Pattern::Domain(want) => domain.to_lowercase() == *want,
        }
    }
}

/// The person signed in, and what they may see.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// Their user name (`admin` for the admin token).
    pub user: String,
    /// Sees every message (the admin token).
    pub all: bool,
    /// The recipients whose mail they may see.
    pub patterns: Vec<Pattern>,
}

impl Viewer {
    /// A mailbox user with these `addresses` (entries that do not parse are
    /// ignored: the config was validated when it was loaded).
    pub fn user(user: &str, addresses: &[String]) -> Viewer {
        Viewer {
            user: user.to_owned(),
            all: false,
            patterns: addresses
                .iter()
                .filter_map(|a| Pattern::parse(a).ok())
                .collect(),
        }
    }

    /// The admin: everything.
    pub fn admin() -> Viewer {
        Viewer {
            user: ADMIN_USER.to_owned(),
            all: true,
            patterns: Vec::new(),
        }
    }

    /// True if the mail of `recipient` is theirs to see.
    pub fn may_see(&self, recipient: &str) -> bool {
        self.all || self.patterns.iter().any(|p| p.matches(recipient))
    }

    /// The recipients among `recipients` they may see, in order.
    pub fn visible<'a>(&self, recipients: &'a [String]) -> Vec<&'a str> {
        recipients
            .iter()
            .filter(|r| self.may_see(r))
            .map(String::as_str)
            .collect()
    }
}

/// An argon2id PHC string for `password` (default parameters, random salt
/// from the operating system), as `breakwater hash-password` prints it.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Checks that `phc` is an argon2 PHC string this build can verify.
pub fn check_password_hash(phc: &str) -> Result<(), String> {
    let hash = PasswordHash::new(phc.trim())
        .map_err(|e| format!("not a PHC string ({e}); make one with `breakwater hash-password`"))?;
    if !matches!(hash.algorithm.as_str(), "argon2id" | "argon2i" | "argon2d") {
        return Err(format!(
            "algorithm {:?} is not argon2; make one with `breakwater hash-password`",
            hash.algorithm.as_str()
        ));
    }
    let params = Params::try_from(&hash).map_err(|e| format!("argon2 parameters: {e}"))?;
    if params.m_cost() > 1 << 20 {
        return Err("argon2 memory cost above 1 GiB: every sign-in would need that much".into());
    }
    if hash.hash.is_none() || hash.salt.is_none() {
        return Err("the PHC string has no salt or no hash".into());
    }
    Ok(())
}

/// True if `password` matches `phc`. Blocking and slow by design (tens of
/// milliseconds): call it from a blocking thread.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc.trim()).is_ok_and(|hash| {
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

/// A hash of a random password, checked against for an unknown user so that
/// the answer takes as long as for a known one (no user enumeration by timing).
pub fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        let mut bytes = [0u8; 16];
        let _ = rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut bytes);
        let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        hash_password(&password).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse() {
        assert_eq!(
            Pattern::parse("Alice@Example.COM").unwrap(),
            Pattern::Address("alice@example.com".into())
        );
        assert_eq!(
            Pattern::parse(" *@Sales.Example.com. ").unwrap(),
            Pattern::Domain("sales.example.com".into())
        );
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "a*@example.com",
            "*@*.example.com",
            "al ice@example.com",
            "alice@exa mple.com",
            "*@",
            "alice@.example.com",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn patterns_match() {
        let exact = Pattern::parse("alice@example.com").unwrap();
        assert!(exact.matches("alice@example.com"));
        assert!(exact.matches("ALICE@Example.Com"));
        assert!(exact.matches("alice@example.com."));
        assert!(!exact.matches("alice2@example.com"));
        assert!(!exact.matches("alice@example.com.evil.test"));
        assert!(!exact.matches("xalice@example.com"));
        assert!(!exact.matches("alice"));
        assert!(!exact.matches(""));
        let domain = Pattern::parse("*@sales.example.com").unwrap();
        assert!(domain.matches("bob@sales.example.com"));
        assert!(domain.matches("Bob@SALES.example.com"));
        assert!(!domain.matches("bob@example.com"));
        assert!(!domain.matches("bob@eu.sales.example.com"));
        assert!(!domain.matches("bob@badsales.example.com"));
        assert!(!domain.matches("@sales.example.com"));
        // A quoted local part holding an @ is judged by its last @.
        assert!(domain.matches("\"x@y\"@sales.example.com"));
        assert!(!exact.matches("\"alice@example.com\"@evil.test"));
    }

    #[test]
    fn viewers_see_their_recipients_only() {
        let alice = Viewer::user(
            "alice",
            &["alice@example.com".into(), "*@sales.example.com".into()],
        );
        let rcpts: Vec<String> = [
            "bob@example.com",
            "Alice@example.com",
            "carol@sales.example.com",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            alice.visible(&rcpts),
            ["Alice@example.com", "carol@sales.example.com"]
        );
        assert!(!alice.may_see("bob@example.com"));
        assert_eq!(Viewer::admin().visible(&rcpts).len(), 3);
        assert!(Viewer::user("x", &[]).visible(&rcpts).is_empty());
    }

    #[test]
    fn hashes_verify_and_are_checked() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        assert!(check_password_hash(&h).is_ok());
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct hors", &h));
        assert!(!verify_password("correct horse", "nonsense"));
        assert_ne!(h, hash_password("correct horse").unwrap(), "salted");
        assert!(check_password_hash("").is_err());
        assert!(check_password_hash("$argon2id$v=19$...").is_err());
        assert!(check_password_hash("$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA").is_err());
        assert!(!verify_password("x", decoy_hash()));
        assert!(check_password_hash(decoy_hash()).is_ok());
    }
}
